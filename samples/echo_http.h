/* The HTTP/1.1 side of the echo server sample: bytes read from a client go
 * in, response bytes to write come out, and nothing here does I/O.
 *
 * One echo_conn_t per connection. The server feeds it what it reads, writes
 * what echo_conn_output() holds, reports what it wrote with
 * echo_conn_consume(), and asks echo_conn_want_input() before reading again
 * and echo_conn_should_close() once the output is flushed. The same calls
 * drive the libFuzzer target in fuzz/ and the tests in tests/.
 *
 * Every request is answered with "HTTP/1.1 200 OK", Content-Type: text/plain
 * and a Content-Length; the body is the request's body (de-chunked) or, when
 * that is empty, the request target. Requests that break the limits below,
 * that are malformed, or that have a shape used for request smuggling get an
 * error response with "Connection: close", and the connection closes after
 * it. An HTTP/1.1 request with "Expect: 100-continue" and a body first gets
 * "HTTP/1.1 100 Continue" once its head is accepted, so a client that waits
 * for it (curl does, for bodies over 1 KiB) sends the body at once; a head
 * that is refused gets the error response instead. The parsing is llhttp's,
 * compiled in strict mode, plus the checks of echo_http.c that llhttp 8.1
 * does not make itself.
 *
 * A server loop, in outline:
 *
 *     for (;;) {
 *       write all of echo_conn_output(), echo_conn_consume() what was written;
 *       if (echo_conn_should_close(c))
 *         break;
 *       if (!echo_conn_want_input(c)) {       (held off: parse what was kept)
 *         if (echo_conn_feed(c, NULL, 0) < 0) { write the output; break; }
 *         continue;
 *       }
 *       read at most ECHO_INPUT_LIMIT bytes, with the 10 s header deadline if
 *       echo_conn_in_request(c), else the 5 s idle one;
 *       if (echo_conn_feed(c, buf, n) < 0) { write the output; break; }
 *     }
 */
#ifndef WEFT_SAMPLES_ECHO_HTTP_H
#define WEFT_SAMPLES_ECHO_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Reads are held off (echo_conn_want_input() is false) while this many
 * response bytes wait to be written. */
#define ECHO_OUTPUT_LIMIT ((size_t)1 << 20)

/* The most unparsed input a connection keeps while parsing is paused. A
 * server that reads at most this much at a time, only when
 * echo_conn_want_input() says so, and calls echo_conn_feed(c, NULL, 0) after
 * each echo_conn_consume(), never reaches it. */
#define ECHO_INPUT_LIMIT ((size_t)64 << 10)

/* What one connection may send. A request that goes past a limit gets the
 * status named here and the connection closes; the bytes over a limit are
 * never stored. */
typedef struct echo_limits {
  size_t max_request_line; /* default 8 KiB: longer -> 414 */
  size_t max_header_bytes; /* default 16 KiB for the header block -> 431 */
  size_t max_headers;      /* default 100 fields -> 431 */
  size_t max_body;         /* default 1 MiB (after de-chunking) -> 413 */
  size_t max_pipeline;     /* default 16: responses queued but not yet taken by the server */
} echo_limits_t;

/* Fills *lim with the defaults above. */
void echo_limits_default(echo_limits_t *lim);

/* The buffers' limits. Tests and the fuzzer make them small; a server keeps
 * the defaults. */
typedef struct echo_buffers {
  size_t max_output; /* default ECHO_OUTPUT_LIMIT: reads are held off at this much output */
  size_t max_input;  /* default ECHO_INPUT_LIMIT: unparsed input kept while paused */
} echo_buffers_t;

typedef struct echo_conn echo_conn_t;

/* Makes the state of one new connection into *c, with the given limits
 * (NULL: the defaults). Returns 0, -ENOMEM, or -EINVAL when c is NULL or a
 * limit of max_request_line or max_pipeline is 0. */
int echo_conn_new(echo_conn_t **c, const echo_limits_t *lim);

/* echo_conn_new() with buffer limits too (buf NULL: the defaults). Returns
 * what echo_conn_new() does, and -EINVAL for a buffer limit of 0. */
int echo_conn_new_ex(echo_conn_t **c, const echo_limits_t *lim, const echo_buffers_t *buf);

/* Frees the connection's state and everything it holds. NULL is fine. */
void echo_conn_free(echo_conn_t *c);

/* Feeds bytes read from the client (len may be 0 to resume after the server
 * took output). Parses as many complete requests as it can, appending each
 * response to the output. Stops parsing (keeping the unparsed input, at most
 * the max_input buffer limit) once max_pipeline responses are waiting, the
 * output limit is reached, or a response says the connection closes.
 * Returns 0, or -1 if the connection must close now: an error response may
 * still be in the output; send it, then close. -1 also comes when the input
 * kept while paused would pass its limit, when memory runs out, and on every
 * call after one of those. Bytes fed once closing was decided are dropped. */
int echo_conn_feed(echo_conn_t *c, const char *data, size_t len);

/* Pending response bytes (contiguous), *len of them: whole responses only,
 * pipelined ones back to back so one write sends them all. The pointer is
 * valid until the next echo_conn_feed(), echo_conn_consume() or
 * echo_conn_free(). */
const char *echo_conn_output(echo_conn_t *c, size_t *len);

/* The server wrote the first n bytes of the output (n larger than the output
 * is taken as all of it). Never parses: call echo_conn_feed(c, NULL, 0)
 * afterwards to resume. */
void echo_conn_consume(echo_conn_t *c, size_t n);

/* How many responses the output holds, the first of them perhaps partly
 * written already. */
size_t echo_conn_pending(echo_conn_t *c);

/* False while the pipeline limit or the output limit holds reads off, while
 * input kept back by them waits to be parsed (echo_conn_feed(c, NULL, 0)
 * parses it), or after close was decided. */
bool echo_conn_want_input(echo_conn_t *c);

/* Once the output is flushed, close: the last response said
 * "Connection: close", or the connection failed. */
bool echo_conn_should_close(echo_conn_t *c);

/* Bytes of an unfinished request have arrived (the server then applies the
 * 10 s header deadline; otherwise the 5 s idle keep-alive deadline). False
 * once close was decided. */
bool echo_conn_in_request(echo_conn_t *c);

/* Responses produced so far, error responses included. */
uint64_t echo_conn_requests(echo_conn_t *c);

/* ---- inspection, for the tests and the fuzzer */

typedef struct echo_conn_stats {
  size_t held_bytes;      /* bytes allocated now for input, target, output and bookkeeping */
  size_t peak_held_bytes; /* the most held_bytes has been */
  size_t held_input;      /* unparsed input kept now */
  uint64_t dropped_bytes; /* bytes fed after close was decided, ignored */
  int last_error_status;  /* the status of the error response sent, or 0 */
  bool input_overflow;    /* the connection failed because kept input passed its limit */
} echo_conn_stats_t;

/* Fills *st with the connection's figures. */
void echo_conn_get_stats(echo_conn_t *c, echo_conn_stats_t *st);

/* The most held_bytes can ever reach with this connection's limits. */
size_t echo_conn_memory_bound(echo_conn_t *c);

/* Describes the i-th response in the output (0 is the first): *end is the
 * offset just past it in everything the connection ever output (so the
 * first response may have been partly consumed), and *bodiless says it
 * answers a HEAD request, whose Content-Length announces a body that is not
 * sent. A 100 Continue is counted with the response that follows it (one
 * whose request has not ended yet lies past the last response's end).
 * Returns false when the output holds no response i. */
bool echo_conn_response_info(echo_conn_t *c, size_t i, uint64_t *end, bool *bodiless);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_SAMPLES_ECHO_HTTP_H */
