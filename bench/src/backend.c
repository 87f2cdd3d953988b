/* portmux bench backend: a single-threaded epoll server on 127.0.0.1.
 *
 * The first request's path picks the behaviour of a connection:
 *   GET /            -> a short HTTP/1.1 response, then close
 *   GET /echo        -> echo every byte, the request included, until EOF
 *   GET /sink?n=N    -> read N more bytes, answer one byte "K"
 * Usage: backend PORT
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

enum { HEAD, ECHO, SINK };
struct conn { int fd, mode, hlen; long long remain; char head[2048]; };

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
    "Connection: close\r\n\r\nhello world\n";

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w > 0) { p += w; n -= (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pfd = { fd, POLLOUT, 0 };
            poll(&pfd, 1, 1000);
            continue;
        }
        return;
    }
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: backend PORT\n"); return 2; }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) { perror("listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    static char buf[262144];
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event cev = { .events = EPOLLIN, .data.ptr = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) { drop(ep, c); continue; }
            if (c->mode == ECHO) { write_all(c->fd, buf, (size_t)r); continue; }
            if (c->mode == SINK) {
                c->remain -= r;
                if (c->remain <= 0) { write_all(c->fd, "K", 1); c->mode = HEAD; c->hlen = 0; }
                continue;
            }
            size_t take = (size_t)r;
            if (take > sizeof c->head - 1 - (size_t)c->hlen) take = sizeof c->head - 1 - (size_t)c->hlen;
            memcpy(c->head + c->hlen, buf, take);
            c->hlen += (int)take;
            c->head[c->hlen] = 0;
            char *end = strstr(c->head, "\r\n\r\n");
            if (end == NULL) {
                if (c->hlen >= (int)sizeof c->head - 1) drop(ep, c);
                continue;
            }
            long long extra = c->hlen - (end + 4 - c->head) + (r - (ssize_t)take);
            if (strncmp(c->head, "GET /echo", 9) == 0) {
                c->mode = ECHO;
                write_all(c->fd, c->head, (size_t)c->hlen);
                if (r > (ssize_t)take) write_all(c->fd, buf + take, (size_t)(r - (ssize_t)take));
            } else if (strncmp(c->head, "GET /sink?n=", 12) == 0) {
                c->mode = SINK;
                c->remain = atoll(c->head + 12) - extra;
                if (c->remain <= 0) { write_all(c->fd, "K", 1); c->mode = HEAD; c->hlen = 0; }
            } else {
                write_all(c->fd, RESPONSE, sizeof RESPONSE - 1);
                drop(ep, c);
            }
        }
    }
}
