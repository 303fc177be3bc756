/* LD_PRELOAD shim for benchmarks: sets TCP_NODELAY on every accepted socket.
 *
 * Garage does not set it, so a small ranged GET answered on a kept-alive connection can stall
 * ~40 ms (Nagle's algorithm holding the body back until the client's delayed ACK). bench/run
 * builds this with `gcc -shared -fPIC -O2 -o nodelay.so nodelay.c -ldl` and starts Garage with
 * LD_PRELOAD pointing at it. Non-TCP sockets just make setsockopt fail, which is ignored. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void nodelay(int fd) {
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real)
        real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    int c = real(fd, addr, len);
    nodelay(c);
    return c;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real)
        real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int c = real(fd, addr, len, flags);
    nodelay(c);
    return c;
}
