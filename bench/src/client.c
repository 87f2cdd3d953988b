/* portmux bench load client: one process, epoll, loopback only; prints JSON.
 *
 *   client lat  PORT COUNT SECONDS   sequential connect + GET, first-byte latency
 *   client rate PORT CONC SECONDS    CONC connect/GET/read-to-EOF loops: connections/s
 *   client bulk PORT BYTES SECONDS   one stream of BYTES to /sink: MB/s
 *   client pp   PORT CONC SECONDS    64-byte ping-pong on CONC /echo connections
 *   client idle PORT COUNT SECONDS   open COUNT verified /echo connections, print
 *                                    "ready", hold them until stdin closes
 * Every mode stops at its count or its time limit, whichever comes first.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr;
static const char GET[] = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
static const char ECHO[] = "GET /echo HTTP/1.1\r\nHost: bench\r\n\r\n";

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* Rotate the source over 127.0.0.2-254 so back-to-back tests do not run out of
 * ephemeral ports while earlier connections sit in TIME_WAIT. */
static int dial(int nonblock) {
    static unsigned next;
    int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0), one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = { .sin_family = AF_INET };
    src.sin_addr.s_addr = htonl(0x7f000002u + (next++ % 253u));
    bind(fd, (struct sockaddr *)&src, sizeof src);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static int read_exact(int fd, char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int mode_lat(int count, double limit) {
    double *lat = calloc((size_t)count, sizeof *lat), end = now() + limit;
    int done = 0, errors = 0;
    char buf[4096];
    while (done < count && now() < end) {
        double t0 = now();
        int fd = dial(0);
        if (fd < 0 || write(fd, GET, sizeof GET - 1) < 0 || read(fd, buf, sizeof buf) <= 0) {
            errors++;
            if (fd >= 0) close(fd);
            continue;
        }
        lat[done++] = (now() - t0) * 1e6;
        while (read(fd, buf, sizeof buf) > 0) {}
        close(fd);
    }
    qsort(lat, (size_t)done, sizeof *lat, cmp);
    printf("{\"mode\":\"lat\",\"count\":%d,\"errors\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f}\n", done,
           errors, done ? lat[done / 2] : 0.0, done ? lat[(int)(done * 0.99)] : 0.0);
    return 0;
}

struct slot { int fd, state; size_t got; };

static int mode_rate(int conc, double limit) {
    int ep = epoll_create1(0);
    struct slot *s = calloc((size_t)conc, sizeof *s);
    long done = 0, errors = 0;
    char buf[65536];
    double t0 = now(), end = t0 + limit;
    for (int i = 0; i < conc; i++) {
        s[i].fd = dial(1);
        struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = (uint32_t)i };
        epoll_ctl(ep, EPOLL_CTL_ADD, s[i].fd, &ev);
    }
    struct epoll_event evs[256];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            struct slot *c = &s[evs[k].data.u32];
            int restart = 0;
            if (c->state == 0) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || write(c->fd, GET, sizeof GET - 1) < 0) { errors++; restart = 1; }
                else {
                    c->state = 1;
                    struct epoll_event ev = { .events = EPOLLIN, .data.u32 = evs[k].data.u32 };
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            } else {
                ssize_t r = read(c->fd, buf, sizeof buf);
                if (r > 0) { c->got += (size_t)r; continue; }
                if (r < 0 && errno == EAGAIN) continue;
                if (c->got > 0) done++; else errors++;
                restart = 1;
            }
            if (restart) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = dial(1);
                c->state = 0;
                c->got = 0;
                struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = evs[k].data.u32 };
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
            }
        }
    }
    double took = now() - t0;
    printf("{\"mode\":\"rate\",\"connections\":%ld,\"errors\":%ld,\"per_s\":%.1f}\n", done, errors,
           done / took);
    return 0;
}

static int mode_bulk(long long bytes, double limit) {
    static char chunk[262144];
    memset(chunk, 'x', sizeof chunk);
    double t0 = now(), end = t0 + limit;
    int fd = dial(0);
    if (fd < 0) { printf("{\"mode\":\"bulk\",\"error\":\"connect\"}\n"); return 1; }
    char head[128];
    int hl = snprintf(head, sizeof head, "GET /sink?n=%lld HTTP/1.1\r\nHost: bench\r\n\r\n", bytes);
    if (write(fd, head, (size_t)hl) < 0) return 1;
    long long sent = 0;
    struct timeval tv = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    while (sent < bytes && now() < end) {
        size_t n = sizeof chunk;
        if ((long long)n > bytes - sent) n = (size_t)(bytes - sent);
        ssize_t w = write(fd, chunk, n);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (w <= 0) break;
        sent += w;
    }
    char ack;
    struct timeval rv = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rv, sizeof rv);
    int ok = sent == bytes && read(fd, &ack, 1) == 1;
    double took = now() - t0;
    close(fd);
    printf("{\"mode\":\"bulk\",\"bytes\":%lld,\"complete\":%s,\"mb_s\":%.1f}\n", sent,
           ok ? "true" : "false", sent / took / 1e6);
    return 0;
}

static int open_echo(void) {
    char buf[sizeof ECHO];
    int fd = dial(0);
    if (fd < 0) return -1;
    if (write(fd, ECHO, sizeof ECHO - 1) < 0 || read_exact(fd, buf, sizeof ECHO - 1) < 0 ||
        memcmp(buf, ECHO, sizeof ECHO - 1) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int mode_pp(int conc, double limit) {
    int ep = epoll_create1(0);
    struct slot *s = calloc((size_t)conc, sizeof *s);
    char msg[64], buf[4096];
    memset(msg, 'p', sizeof msg);
    long done = 0;
    int open = 0;
    for (int i = 0; i < conc; i++) {
        s[i].fd = open_echo();
        if (s[i].fd < 0) continue;
        open++;
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
        epoll_ctl(ep, EPOLL_CTL_ADD, s[i].fd, &ev);
    }
    double t0 = now(), end = t0 + limit;
    for (int i = 0; i < conc; i++)
        if (s[i].fd >= 0 && write(s[i].fd, msg, sizeof msg) < 0) return 1;
    struct epoll_event evs[256];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            struct slot *c = &s[evs[k].data.u32];
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            c->got += (size_t)r;
            while (c->got >= sizeof msg) {
                c->got -= sizeof msg;
                done++;
                if (write(c->fd, msg, sizeof msg) < 0) break;
            }
        }
    }
    double took = now() - t0;
    printf("{\"mode\":\"pp\",\"connections\":%d,\"round_trips\":%ld,\"per_s\":%.1f}\n", open, done,
           done / took);
    return 0;
}

static int mode_idle(int count, double limit) {
    int *fds = calloc((size_t)count, sizeof *fds), open = 0;
    double end = now() + limit;
    while (open < count && now() < end) {
        int fd = open_echo();
        if (fd < 0) break;
        fds[open++] = fd;
    }
    printf("{\"mode\":\"idle\",\"open\":%d}\n", open);
    fflush(stdout);
    struct pollfd p = { 0, POLLIN, 0 };
    char b[64];
    while (now() < end + 120 && poll(&p, 1, 1000) >= 0) {
        if (p.revents && read(0, b, sizeof b) <= 0) break;
    }
    for (int i = 0; i < open; i++) close(fds[i]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: client MODE PORT N SECONDS\n"); return 2; }
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[2]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    double limit = atof(argv[4]);
    const char *m = argv[1];
    if (!strcmp(m, "lat")) return mode_lat(atoi(argv[3]), limit);
    if (!strcmp(m, "rate")) return mode_rate(atoi(argv[3]), limit);
    if (!strcmp(m, "bulk")) return mode_bulk(atoll(argv[3]), limit);
    if (!strcmp(m, "pp")) return mode_pp(atoi(argv[3]), limit);
    if (!strcmp(m, "idle")) return mode_idle(atoi(argv[3]), limit);
    fprintf(stderr, "unknown mode %s\n", m);
    return 2;
}
