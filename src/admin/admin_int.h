/*
 * admin_int.h: the admin listener's HTTP/1.1 server (admin_http.c), used
 * only by admin.c. It reads requests with the http module's parser (the one
 * the client side uses) under the admin block's limits and answers them one
 * at a time per connection.
 */
#ifndef OB_ADMIN_INT_H
#define OB_ADMIN_INT_H

#include "config.h"
#include "core.h"

#include <event2/event.h>

typedef struct ob_admin_http ob_admin_http_t;

/*
 * One admin request. Owned by its connection; valid from on_head until
 * ob_admin_http_reply (which may come after any number of loop turns). The
 * strings are NUL-terminated copies.
 */
typedef struct ob_admin_req {
  char method[16];     /* as sent, e.g. "GET" ("?" for an overlong one) */
  bool is_head;        /* HEAD: answered like GET, without the body */
  char *path;          /* percent-decoded path, without the query */
  char *query;         /* raw query after '?', or NULL */
  char *authorization; /* the Authorization field's value, or NULL */
  ob_buf_t body;       /* the complete body (on_request only) */
  bool has_body;       /* the head announced a body */
  struct admin_conn *conn_; /* private */
} ob_admin_req_t;

typedef struct ob_admin_http_cbs {
  /* The head is in, no body byte read yet. Return true to read the body
   * (then on_request follows), or answer now with ob_admin_http_reply and
   * return false: the body is never read (the connection closes after the
   * answer when one was announced). */
  bool (*on_head)(ob_admin_req_t *r, void *ctx);
  /* The complete request; answer with ob_admin_http_reply, now or later. */
  void (*on_request)(ob_admin_req_t *r, void *ctx);
} ob_admin_http_cbs_t;

/* Listen on cfg->admin's host:port on base (borrowed, must outlive the
 * server). cbs and ctx borrowed for the server's life. Limits are read from
 * cfg (only during the call; see ob_admin_http_set_limits). NULL (logged)
 * when the address cannot be bound. *port receives the bound port. */
ob_admin_http_t *ob_admin_http_create(struct event_base *base, const ob_config_t *cfg, const ob_admin_http_cbs_t *cbs,
                                      void *ctx, unsigned *port);
/* Limits and timeouts for connections accepted from now on and for the
 * requests of open ones that start from now on. cfg read during the call. */
void ob_admin_http_set_limits(ob_admin_http_t *s, const ob_config_t *cfg);

/*
 * Answer r: status, Content-Type ctype, body (borrowed for the call), and
 * extra: further header lines, each ending in CRLF, or NULL. Once per
 * request. Adds Content-Length, and Connection: close when the connection
 * will close after the answer. r is invalid after the call.
 */
void ob_admin_http_reply(ob_admin_req_t *r, int status, const char *ctype, const char *body, size_t len,
                         const char *extra);

/* Close every connection (a request still waiting for its answer is
 * dropped) and the listener. NULL is a no-op. */
void ob_admin_http_destroy(ob_admin_http_t *s);

#endif /* OB_ADMIN_INT_H */
