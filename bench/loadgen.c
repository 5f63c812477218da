/* The benchmark's HTTP load generator (open and closed loop), in C: see bench/loadgen.py, which builds and runs it.

   Why C: on the same two cores as the system under test, the generator's own CPU is taken from the front door.
   The asyncio generator it replaces took 0.29-0.38 of a core at 3,000 requests/s; this one does the same work
   (one epoll loop, pre-formatted keep-alive requests, the same accounting) for the cost of its system calls.

   Open loop: request i is due at t0 + i/rate whatever happened before; it goes out on an idle keep-alive
   connection, or waits for one. Its latency counts from the moment it was DUE, not sent, so a slow server
   cannot hide its queueing by slowing the generator down (no coordinated omission). Closed loop: each
   connection sends its next request as soon as the previous one is answered.

   Output (stdout): `BENCH_PROGRESS {json}` every 0.25 s (t in CLOCK_MONOTONIC seconds, as Python's
   time.monotonic), `BENCH_RESULT {json}` last. Responses must carry Content-Length (the front door's do). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct { char *data; size_t len; } Request;

typedef struct {
    int fd;
    int busy;          /* a request is out, its answer not complete */
    int want_out;      /* registered for EPOLLOUT: part of the request is not written yet */
    int queued;        /* in the idle ring (open loop) */
    double due, sent;  /* when the request in flight was due (open loop) or sent (closed), and sent */
    const Request *req;
    size_t written;
    char *buf;         /* the answer so far */
    size_t blen, bcap;
} Conn;

typedef struct { double *v; size_t n, cap; } Vec;

static void vec_push(Vec *a, double x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 65536;
        a->v = realloc(a->v, a->cap * sizeof(double));
        if (!a->v) { perror("realloc"); exit(2); }
    }
    a->v[a->n++] = x;
}

/* options */
static char host[64] = "127.0.0.1";
static int port, nconns = 32, closed_loop, batch, warmup;
static double open_rate, seconds, drain_seconds = 15.0;
static long max_requests;

static Request *requests;
static size_t nrequests, next_body;
static Conn *conns;
static int ep;

/* accounting */
static long sent_count, ok, events, errors, outstanding, late_dispatch, statuses[600];
static Vec latency, service;
static Vec pending;  /* due times waiting for an idle connection (a FIFO: `pending_head` is its front) */
static size_t pending_head;
/* idle connections, a FIFO ring of indexes: every connection takes its turn, so none sits idle long enough
   for the server's keep-alive timeout to close it while a request is on its way */
static int *idle, idle_head, nidle;
static int stop_sending;
static int warming;  /* the warm-up round is on: answers are checked, not counted */
static long warmup_ok, warmup_answers;
static char protocol_errors[5][80];
static int nprotocol_errors;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void protocol_error(const char *what) {
    if (nprotocol_errors < 5) snprintf(protocol_errors[nprotocol_errors++], 80, "%s", what);
}

static const Request *next_request(void) {
    next_body = (next_body + 1) % nrequests;
    return &requests[next_body];
}

static void watch(Conn *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) { perror("epoll_ctl"); exit(2); }
    c->want_out = out;
}

static void drop(Conn *c);

/* Write what is left of the request; wait for EPOLLOUT if the socket is full. */
static void flush_out(Conn *c) {
    while (c->written < c->req->len) {
        ssize_t w = send(c->fd, c->req->data + c->written, c->req->len - c->written, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) { if (!c->want_out) watch(c, 1); return; }
            drop(c);
            return;
        }
        c->written += (size_t)w;
    }
    if (c->want_out) watch(c, 0);
}

static void send_on(Conn *c, double due) {
    c->busy = 1;
    c->due = due;
    c->sent = now();
    c->req = next_request();
    c->written = 0;
    outstanding++;
    flush_out(c);
}

static int under_cap(void) { return !max_requests || sent_count < max_requests; }

/* Give an idle connection its next request, if there is one. */
static void next_for(Conn *c) {
    if (closed_loop) {
        if (!stop_sending && under_cap()) { sent_count++; send_on(c, now()); }
        return;
    }
    if (pending_head < pending.n) send_on(c, pending.v[pending_head++]);
    else if (!c->queued) { c->queued = 1; idle[(idle_head + nidle++) % nconns] = (int)(c - conns); }
}

static int connect_one(Conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { if (fd >= 0) close(fd); return -1; }
    int one = 1;  /* as asyncio's transports: requests go out at once */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) { close(fd); return -1; }
    c->fd = fd;
    c->busy = c->want_out = 0;
    c->blen = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { perror("epoll_ctl"); exit(2); }
    return 0;
}

/* The connection failed or the server closed it: a request in flight is an error; a fresh connection takes
   its place. */
static void drop(Conn *c) {
    if (c->busy) { c->busy = 0; outstanding--; errors++; }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (connect_one(c) < 0) { errors++; return; }
    next_for(c);
}

static const char *find_ci(const char *hay, size_t n, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (strncasecmp(hay + i, needle, m) == 0) return hay + i;
    return NULL;
}

/* Complete answers in the buffer: account for each, then give the connection its next request. */
static void on_data(Conn *c) {
    for (;;) {
        char *end = memmem(c->buf, c->blen, "\r\n\r\n", 4);
        if (!end) return;
        size_t head_len = (size_t)(end - c->buf);
        const char *cl = find_ci(c->buf, head_len, "\r\ncontent-length:");
        if (!cl || head_len < 12) {
            protocol_error("response without Content-Length");
            drop(c);
            return;
        }
        long length = strtol(cl + 17, NULL, 10);
        size_t total = head_len + 4 + (size_t)length;
        if (c->blen < total) return;
        int status = atoi(c->buf + 9);
        int close_after = find_ci(c->buf, head_len, "\r\nconnection: close") != NULL;
        double t = now();
        if (!c->busy) { protocol_error("answer without a request"); drop(c); return; }
        c->busy = 0;
        outstanding--;
        if (warming) {
            warmup_answers++;
            warmup_ok += status == 200;
            memmove(c->buf, c->buf + total, c->blen - total);
            c->blen -= total;
            if (close_after) drop(c);
            return;
        }
        if (status > 0 && status < 600) statuses[status]++;
        if (status == 200) {
            ok++;
            if (batch) {
                const char *a = memmem(end + 4, length < 200 ? (size_t)length : 200, "\"accepted\":", 11);
                if (a) events += strtol(a + 11, NULL, 10);
            } else {
                events++;
            }
            vec_push(&latency, t - c->due);
            vec_push(&service, t - c->sent);
        }
        memmove(c->buf, c->buf + total, c->blen - total);
        c->blen -= total;
        if (close_after) { drop(c); return; }
        next_for(c);
        if (c->busy && c->blen) { protocol_error("answer before its request"); drop(c); return; }
    }
}

static void on_readable(Conn *c) {
    for (;;) {
        if (c->bcap - c->blen < 65536) {
            c->bcap = c->bcap * 2 + 65536;
            c->buf = realloc(c->buf, c->bcap);
            if (!c->buf) { perror("realloc"); exit(2); }
        }
        size_t room = c->bcap - c->blen;
        ssize_t r = recv(c->fd, c->buf + c->blen, room, 0);
        if (r > 0) {
            c->blen += (size_t)r;
            if ((size_t)r < room) break;  /* the socket is drained */
            continue;
        }
        if (r < 0 && errno == EAGAIN) break;
        drop(c);  /* EOF or error */
        return;
    }
    on_data(c);
}

static void dispatch(double due) {
    sent_count++;
    while (nidle) {
        Conn *c = &conns[idle[idle_head]];
        idle_head = (idle_head + 1) % nconns;
        nidle--;
        c->queued = 0;
        if (c->fd >= 0 && !c->busy) { send_on(c, due); return; }  /* else: dropped and given work since */
    }
    vec_push(&pending, due);
}


static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_percentiles(Vec *a) {
    if (!a->n) { printf("{}"); return; }
    qsort(a->v, a->n, sizeof(double), cmp_double);
    double sum = 0;
    for (size_t i = 0; i < a->n; i++) sum += a->v[i];
#define Q(p) (a->v[(size_t)((p) * a->n) < a->n ? (size_t)((p) * a->n) : a->n - 1] * 1000)
    printf("{\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p999\": %.3f, \"max\": %.3f, \"mean\": %.3f, \"n\": %zu}",
           Q(0.50), Q(0.90), Q(0.99), Q(0.999), a->v[a->n - 1] * 1000, sum / a->n * 1000, a->n);
#undef Q
}

static void progress(void) {
    long non200 = 0;
    for (int s = 0; s < 600; s++) if (s != 200) non200 += statuses[s];
    printf("BENCH_PROGRESS {\"t\": %.6f, \"ok\": %ld, \"events\": %ld, \"non200\": %ld, \"errors\": %ld}\n", now(), ok,
           events, non200, errors);
    fflush(stdout);
}

static void load_requests(const char *path, const char *req_path, const char *key) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    char head[1024];
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n",
                      req_path, host, port, key);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
        if (!n) continue;
        requests = realloc(requests, (nrequests + 1) * sizeof(Request));
        Request *r = &requests[nrequests++];
        r->data = malloc((size_t)hl + 64 + (size_t)n);
        int l = sprintf(r->data, "%sContent-Length: %zd\r\n\r\n", head, n);
        memcpy(r->data + l, line, (size_t)n);
        r->len = (size_t)l + (size_t)n;
    }
    free(line);
    fclose(f);
    if (!nrequests) { fprintf(stderr, "loadgen: no bodies in %s\n", path); exit(2); }
}

/* Wait up to `wait` seconds for the sockets and serve what is ready. epoll_pwait2: a nanosecond timeout, so a
   request goes out when it is due without a timer's system calls of its own. */
static void poll_once(struct epoll_event *evs, double wait) {
    if (wait < 0) wait = 0;
    struct timespec timeout = {.tv_sec = (time_t)wait, .tv_nsec = (long)((wait - (double)(time_t)wait) * 1e9)};
    int n = epoll_pwait2(ep, evs, 256, &timeout, NULL);
    if (n < 0 && errno != EINTR) { perror("epoll_pwait2"); exit(2); }
    for (int k = 0; k < n; k++) {
        Conn *c = &conns[evs[k].data.u32];
        if (c->fd < 0) continue;
        if ((evs[k].events & EPOLLOUT) && c->busy) flush_out(c);
        if (c->fd >= 0 && (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_readable(c);
    }
}

/* --warmup: one request on every connection, all answered, before the clock starts. The server then holds
   every connection (accepted, its handler started) and the measured run is its steady state, not the
   accepting of a few hundred connections opened in the same millisecond. Not counted in the result. */
static void run_warmup(void) {
    warming = 1;
    for (int c = 0; c < nconns; c++) { sent_count++; send_on(&conns[c], now()); }
    struct epoll_event evs[256];
    double until = now() + 30;
    while (outstanding > 0 && now() < until) poll_once(evs, 0.1);
    warming = 0;
    sent_count = 0;
    outstanding = 0;
    for (int c = 0; c < nconns; c++) conns[c].busy = 0;
}

int main(int argc, char **argv) {
    const char *url = NULL, *req_path = "/v1/events", *bodies = NULL, *key = "";
    static struct option opts[] = {
        {"url", 1, 0, 'u'}, {"path", 1, 0, 'p'}, {"bodies", 1, 0, 'b'}, {"key", 1, 0, 'k'},
        {"open-rate", 1, 0, 'r'}, {"closed", 0, 0, 'c'}, {"conns", 1, 0, 'n'}, {"seconds", 1, 0, 's'},
            {"max-requests", 1, 0, 'm'}, {"drain-seconds", 1, 0, 'd'}, {"warmup", 0, 0, 'w'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'u': url = optarg; break;
        case 'p': req_path = optarg; break;
        case 'b': bodies = optarg; break;
        case 'k': key = optarg; break;
        case 'r': open_rate = atof(optarg); break;
        case 'c': closed_loop = 1; break;
        case 'n': nconns = atoi(optarg); break;
        case 's': seconds = atof(optarg); break;
        case 'm': max_requests = atol(optarg); break;
        case 'd': drain_seconds = atof(optarg); break;
        case 'w': warmup = 1; break;
        default: goto usage;
        }
    }
    if (!url || !bodies || seconds <= 0 || nconns <= 0 || (closed_loop == (open_rate > 0))) {
    usage:
        fprintf(stderr, "usage: loadgen --url http://127.0.0.1:PORT --bodies FILE (--open-rate R | --closed) "
                        "--seconds S [--path P] [--key K] [--conns C] [--max-requests N] [--drain-seconds D] [--warmup]\n");
        return 2;
    }
    if (seconds > 600) { fprintf(stderr, "loadgen: --seconds is at most 600\n"); return 2; }
    if (sscanf(url, "http://127.0.0.1:%d", &port) != 1) {
        fprintf(stderr, "loadgen: load is only ever sent to 127.0.0.1\n");
        return 2;
    }
    size_t pl = strlen(req_path);
    batch = pl >= 13 && strcmp(req_path + pl - 13, "/batch/events") == 0;
    load_requests(bodies, req_path, key);

    ep = epoll_create1(0);
    conns = calloc((size_t)nconns, sizeof(Conn));
    idle = calloc((size_t)nconns, sizeof(int));
    for (int i = 0; i < nconns; i++)
        if (connect_one(&conns[i]) < 0) { perror("connect"); return 2; }

    if (warmup) run_warmup();
    double t0 = now(), deadline = t0 + seconds, next_progress = t0, end_sending = 0, drain_until = 0;
    long total = 0, i = 0;
    if (closed_loop) {
        for (int c = 0; c < nconns; c++) next_for(&conns[c]);
    } else {
        for (int c = 0; c < nconns; c++)
            if (!conns[c].queued) { conns[c].queued = 1; idle[nidle++] = c; }  /* (a reconnected one may be) */
        total = (long)(seconds * open_rate);
        if (max_requests && max_requests < total) total = max_requests;
    }
    struct epoll_event evs[256];
    for (;;) {
        double t = now();
        if (!stop_sending) {
            if (closed_loop) {
                if (t >= deadline || !under_cap()) stop_sending = 1;
            } else {
                while (i < total && t0 + (double)i / open_rate <= t) {
                    double due = t0 + (double)i / open_rate;
                    if (t - due > 0.002) late_dispatch++;
                    dispatch(due);
                    i++;
                }
                if (i >= total) stop_sending = 1;
            }
            if (stop_sending) { end_sending = t; drain_until = t + drain_seconds; }
        }
        if (t >= next_progress) { progress(); next_progress += 0.25; }
        if (stop_sending && ((outstanding == 0 && pending_head == pending.n) || t >= drain_until)) break;
        double wake = next_progress;
        if (!stop_sending) {
            double at = closed_loop ? deadline : t0 + (double)i / open_rate;
            if (at < wake) wake = at;
        } else if (drain_until < wake) {
            wake = drain_until;
        }
        poll_once(evs, wake - now());
    }
    progress();
    double tend = now(), elapsed_sending = end_sending - t0, elapsed = tend - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;

    printf("BENCH_RESULT {\"tool\": \"bench/loadgen.c\", \"mode\": \"%s\", \"offered_rate\": ",
           closed_loop ? "closed" : "open");
    if (closed_loop) printf("null"); else printf("%g", open_rate);
    printf(", \"connections\": %d, \"sent\": %ld, \"ok\": %ld, \"events\": %ld, \"statuses\": {", nconns, sent_count, ok,
           events);
    for (int s = 0, first = 1; s < 600; s++)
        if (statuses[s]) { printf("%s\"%d\": %ld", first ? "" : ", ", s, statuses[s]); first = 0; }
    printf("}, \"errors\": %ld, \"unanswered\": %ld, \"protocol_errors\": [", errors,
           outstanding + (long)(pending.n - pending_head));
    for (int k = 0; k < nprotocol_errors; k++) printf("%s\"%s\"", k ? ", " : "", protocol_errors[k]);
    printf("], \"warmup_requests\": %ld, \"warmup_ok\": %ld, \"seconds_sending\": %.3f, \"seconds\": %.3f, "
           "\"requests_per_s\": %.1f, \"events_per_s\": %.1f, \"late_dispatch\": %ld, \"latency_ms\": ",
           warmup_answers, warmup_ok, elapsed_sending, elapsed, elapsed_sending > 0 ? ok / elapsed_sending : 0.0,
           elapsed_sending > 0 ? events / elapsed_sending : 0.0, late_dispatch);
    print_percentiles(&latency);
    printf(", \"service_ms\": ");
    print_percentiles(&service);
    printf(", \"generator_cpu_s\": %.3f, \"generator_cpu_share\": %.3f}\n", cpu, elapsed > 0 ? cpu / elapsed : 0.0);
    fflush(stdout);
    return 0;
}
