/* edgeq device loop. See edgeq_device.h and docs/protocol.md. C99, no malloc, no stdio. */
#include "edgeq_device.h"

#include <string.h>

#include "edgeq_platform.h"

#define PAYLOAD(d) ((d)->tx + EDGEQ_HEADER_SIZE)

/* A message built in place in the transmit frame (no snprintf: it costs kilobytes of flash). */
typedef struct {
    uint8_t *buf;
    size_t len, cap;
} msg;

static void msg_str(msg *m, const char *s) {
    while (*s && m->len < m->cap) m->buf[m->len++] = (uint8_t)*s++;
}

static void msg_num(msg *m, uint32_t v) {
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (n && m->len < m->cap) m->buf[m->len++] = (uint8_t)digits[--n];
}

static void send_frame(edgeq_device *d, uint8_t type, uint8_t seq, size_t len) {
    size_t n = edgeq_encode_frame(d->tx, sizeof d->tx, type, seq, PAYLOAD(d), len);
    if (n) edgeq_platform_write(d->tx, n);
}

static void send_error(edgeq_device *d, uint8_t seq, uint8_t code, const char *text) {
    send_frame(d, EDGEQ_ERROR, seq, edgeq_build_error(PAYLOAD(d), EDGEQ_MAX_PAYLOAD, code, text));
}

/* ERROR frame whose message is built with msg_str/msg_num: start, append, then finish. */
static msg error_start(edgeq_device *d, uint8_t code) {
    msg m;
    m.buf = PAYLOAD(d);
    m.buf[0] = code;
    m.len = 1;
    m.cap = EDGEQ_MAX_PAYLOAD;
    return m;
}

static void error_finish(edgeq_device *d, uint8_t seq, const msg *m) {
    send_frame(d, EDGEQ_ERROR, seq, m->len);
}

static void answer_hello(edgeq_device *d) {
    const edgeq_model_desc *m = d->model;
    const edgeq_parser *p = &d->parser;
    size_t n;
    if (p->length != 0) {
        msg e = error_start(d, EDGEQ_ERR_BAD_PAYLOAD);
        msg_str(&e, "HELLO carries no payload, got ");
        msg_num(&e, p->length);
        msg_str(&e, " bytes");
        error_finish(d, p->seq, &e);
        return;
    }
    n = edgeq_build_hello_reply(PAYLOAD(d), EDGEQ_MAX_PAYLOAD, m->model_sha256, m->arena_size,
                                m->arena_used, m->inputs, m->n_inputs, m->outputs, m->n_outputs);
    if (n == 0) {
        send_error(d, p->seq, EDGEQ_ERR_BAD_PAYLOAD,
                   "HELLO_REPLY (the model's tensor list) does not fit EDGEQ_MAX_PAYLOAD");
        return;
    }
    send_frame(d, EDGEQ_HELLO_REPLY, p->seq, n);
}

static void answer_infer(edgeq_device *d) {
    const edgeq_model_desc *m = d->model;
    const edgeq_parser *p = &d->parser;
    uint8_t *out = PAYLOAD(d) + EDGEQ_INFER_REPLY_HEADER;
    uint32_t time = 0;
    uint8_t unit = EDGEQ_TIME_US;
    const char *error = NULL;
    if (m->not_ready) {
        send_error(d, p->seq, EDGEQ_ERR_NOT_READY, m->not_ready);
        return;
    }
    if (p->length != m->input_bytes) {
        msg e = error_start(d, EDGEQ_ERR_BAD_PAYLOAD);
        msg_str(&e, "INFER carries ");
        msg_num(&e, p->length);
        msg_str(&e, " bytes, the model takes ");
        msg_num(&e, (uint32_t)m->input_bytes);
        error_finish(d, p->seq, &e);
        return;
    }
    if (m->output_bytes > EDGEQ_MAX_PAYLOAD - EDGEQ_INFER_REPLY_HEADER) {
        msg e = error_start(d, EDGEQ_ERR_BAD_PAYLOAD);
        msg_str(&e, "INFER_REPLY would carry ");
        msg_num(&e, (uint32_t)(m->output_bytes + EDGEQ_INFER_REPLY_HEADER));
        msg_str(&e, " bytes, above EDGEQ_MAX_PAYLOAD ");
        msg_num(&e, EDGEQ_MAX_PAYLOAD);
        msg_str(&e, "; rebuild the firmware with a larger one");
        error_finish(d, p->seq, &e);
        return;
    }
    if (d->infer(d->ctx, p->payload, p->length, out, m->output_bytes, &time, &unit, &error) != 0) {
        send_error(d, p->seq, EDGEQ_ERR_INVOKE_FAILED, error ? error : "inference failed");
        return;
    }
    d->count++; /* wraps at 2^32, as the protocol says */
    send_frame(d, EDGEQ_INFER_REPLY, p->seq,
         edgeq_build_infer_reply(PAYLOAD(d), EDGEQ_MAX_PAYLOAD, time, unit, d->count, NULL,
                                 m->output_bytes));
}

static void answer_frame(edgeq_device *d) {
    const edgeq_parser *p = &d->parser;
    if (p->version != EDGEQ_PROTOCOL_VERSION) {
        msg e = error_start(d, EDGEQ_ERR_BAD_VERSION);
        msg_str(&e, "protocol version ");
        msg_num(&e, p->version);
        msg_str(&e, " not supported; this device speaks version ");
        msg_num(&e, EDGEQ_PROTOCOL_VERSION);
        error_finish(d, p->seq, &e);
    } else if (p->type == EDGEQ_HELLO) {
        answer_hello(d);
    } else if (p->type == EDGEQ_INFER) {
        answer_infer(d);
    } else {
        msg e = error_start(d, EDGEQ_ERR_UNKNOWN_TYPE);
        msg_str(&e, "unknown frame type ");
        msg_num(&e, p->type);
        error_finish(d, p->seq, &e);
    }
}

void edgeq_device_init(edgeq_device *d, const edgeq_model_desc *m, edgeq_infer_fn fn, void *ctx) {
    edgeq_parser_init(&d->parser);
    d->model = m;
    d->infer = fn;
    d->ctx = ctx;
    d->count = 0;
    d->last_rx_us = 0;
}

size_t edgeq_device_poll(edgeq_device *d) {
    size_t i, n = edgeq_platform_read(d->rx, sizeof d->rx);
    uint32_t now = edgeq_platform_micros();
    if (n > sizeof d->rx) n = sizeof d->rx; /* a port that returns more than cap must not overrun rx */
    /* unsigned difference: correct across the 2^32 wrap of the microsecond counter. Checked before
     * new bytes too, for ports whose read blocks or a loop that polls rarely. */
    if (edgeq_parser_busy(&d->parser) &&
        (uint32_t)(now - d->last_rx_us) >= (uint32_t)EDGEQ_INTERBYTE_TIMEOUT_US)
        edgeq_parser_reset(&d->parser);
    if (n == 0) return 0;
    d->last_rx_us = now;
    for (i = 0; i < n; i++) {
        switch (edgeq_parser_feed(&d->parser, d->rx[i])) {
        case EDGEQ_FRAME_READY:
            answer_frame(d);
            /* answering may take long (an inference): the next bytes are not late */
            d->last_rx_us = edgeq_platform_micros();
            break;
        case EDGEQ_BAD_CRC:
            send_error(d, d->parser.seq, EDGEQ_ERR_BAD_CRC, "bad CRC, frame dropped");
            break;
        case EDGEQ_BAD_LENGTH: {
            msg e = error_start(d, EDGEQ_ERR_BAD_LENGTH);
            msg_str(&e, "frame announces ");
            msg_num(&e, d->parser.length);
            msg_str(&e, " payload bytes, EDGEQ_MAX_PAYLOAD is ");
            msg_num(&e, EDGEQ_MAX_PAYLOAD);
            error_finish(d, 0, &e);
            break;
        }
        default:
            break;
        }
    }
    return n;
}
