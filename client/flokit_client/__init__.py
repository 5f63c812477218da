"""FloKit events client: `Client(api_key, host).track(...)` queues, a background thread sends batches."""

from .client import Client, Stats

__all__ = ["Client", "Stats"]
__version__ = "0.1.0"
