/*
 * sock.h: a connection's buffered socket I/O. Not for use outside src/net.
 *
 * Why not a plain bufferevent: libevent's socket bufferevent asks the
 * kernel how much is readable (ioctl FIONREAD) before every read and only
 * ever writes from the loop once the socket reports writable, adding the
 * write event to epoll when data is queued and removing it when the buffer
 * empties. On a proxied request that is three system calls per socket
 * turn on top of the read and the write themselves, about 40 % of the
 * gateway's kernel time. A cleartext ob_sock reads into reserved buffer
 * space with one readv, and writes what was queued during a callback with
 * one writev later in the same loop turn; it waits for the socket to
 * become writable (the only epoll change) only when the kernel did not
 * take everything. TLS connections keep libevent's OpenSSL bufferevent:
 * an ob_sock in "bev mode" forwards every call to it.
 *
 * The interface mirrors the bufferevent calls the protocol files used, so
 * the semantics are the same: callbacks fire from the event loop (never
 * from inside an ob_sock call), the write callback runs after bytes were
 * written and the output is at or below the low watermark, reading stops
 * while the input holds the read high watermark or more, an end of file or
 * error disables reading (or writing) and calls the event callback with
 * BEV_EVENT_* flags, the write timeout runs only while output waits for the
 * socket.
 *
 * Ownership: an ob_sock owns its socket (closed by ob_sock_free) and its
 * buffers; a callback may free the ob_sock it was called for, and ob_sock
 * never touches it after a callback returns.
 */
#ifndef OB_NET_SOCK_H
#define OB_NET_SOCK_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stddef.h>

typedef struct ob_sock ob_sock_t;
typedef void (*ob_sock_data_cb)(ob_sock_t *s, void *arg);
typedef void (*ob_sock_event_cb)(ob_sock_t *s, short what, void *arg);

/* A cleartext socket, already connected (accepted or connected); owns fd. */
ob_sock_t *ob_sock_new_fd(struct event_base *base, evutil_socket_t fd);
/* Bev mode: takes bev (freed by ob_sock_free). Used for TLS and while a
 * cleartext upstream connection is connecting (libevent resolves and
 * connects it); ob_sock_detach_bev then switches a connected cleartext
 * one to direct I/O. */
ob_sock_t *ob_sock_new_bev(struct bufferevent *bev);
/* A connected cleartext bev-mode sock takes over the bufferevent's socket
 * and frees the bufferevent. Its buffers must be empty (right after
 * BEV_EVENT_CONNECTED they are). Callbacks, watermarks and the write
 * timeout carry over; reading and writing start disabled. */
void ob_sock_detach_bev(ob_sock_t *s);
/* Close the socket and free everything. NULL is a no-op. */
void ob_sock_free(ob_sock_t *s);

/* The bufferevent in bev mode (TLS: SSL, errors, connect), else NULL. */
struct bufferevent *ob_sock_bev(const ob_sock_t *s);
struct evbuffer *ob_sock_input(const ob_sock_t *s);
struct evbuffer *ob_sock_output(const ob_sock_t *s);
evutil_socket_t ob_sock_fd(const ob_sock_t *s);

void ob_sock_setcb(ob_sock_t *s, ob_sock_data_cb rd, ob_sock_data_cb wr, ob_sock_event_cb ev, void *arg);
void ob_sock_enable(ob_sock_t *s, short what);
void ob_sock_disable(ob_sock_t *s, short what);
/* EV_READ: only the high mark is used (0 = none). EV_WRITE: the low mark. */
void ob_sock_setwatermark(ob_sock_t *s, short what, size_t low, size_t high);
/* How long output may wait for the socket to take any of it; NULL = no
 * limit. Past it: BEV_EVENT_WRITING | BEV_EVENT_TIMEOUT. */
void ob_sock_set_write_timeout(ob_sock_t *s, const struct timeval *tv);

#endif /* OB_NET_SOCK_H */
