/* edgeq device protocol, version 1. See edgeq_protocol.h and docs/protocol.md. */
#include "edgeq_protocol.h"

#include <string.h>

enum {
    ST_SOF = 0,
    ST_VERSION,
    ST_TYPE,
    ST_SEQ,
    ST_LEN_LO,
    ST_LEN_HI,
    ST_PAYLOAD,
    ST_CRC_LO,
    ST_CRC_HI
};

uint16_t edgeq_crc16_update(uint16_t crc, uint8_t byte) {
    int i;
    crc ^= (uint16_t)((uint16_t)byte << 8);
    for (i = 0; i < 8; i++) {
        crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
    }
    return crc;
}

uint16_t edgeq_crc16(const uint8_t *data, size_t len) {
    uint16_t crc = 0xFFFFu;
    size_t i;
    for (i = 0; i < len; i++) crc = edgeq_crc16_update(crc, data[i]);
    return crc;
}

static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

size_t edgeq_encode_frame(uint8_t *out, size_t cap, uint8_t type, uint8_t seq,
                          const uint8_t *payload, size_t len) {
    uint16_t crc;
    if (len > EDGEQ_MAX_PAYLOAD || cap < len + EDGEQ_FRAME_OVERHEAD) return 0;
    if (len && payload != out + EDGEQ_HEADER_SIZE) memmove(out + EDGEQ_HEADER_SIZE, payload, len);
    out[0] = EDGEQ_SOF;
    out[1] = EDGEQ_PROTOCOL_VERSION;
    out[2] = type;
    out[3] = seq;
    put_u16(out + 4, (uint16_t)len);
    crc = edgeq_crc16(out + 1, len + EDGEQ_HEADER_SIZE - 1);
    put_u16(out + EDGEQ_HEADER_SIZE + len, crc);
    return len + EDGEQ_FRAME_OVERHEAD;
}

void edgeq_parser_init(edgeq_parser *p) {
    memset(p, 0, sizeof *p);
    p->state = ST_SOF;
}

void edgeq_parser_reset(edgeq_parser *p) { p->state = ST_SOF; }

int edgeq_parser_busy(const edgeq_parser *p) { return p->state != ST_SOF; }

edgeq_status edgeq_parser_feed(edgeq_parser *p, uint8_t byte) {
    switch (p->state) {
    case ST_SOF:
        if (byte == EDGEQ_SOF) {
            p->crc = 0xFFFFu;
            p->state = ST_VERSION;
        }
        return EDGEQ_NEED_MORE;
    case ST_VERSION:
        p->version = byte;
        p->crc = edgeq_crc16_update(p->crc, byte);
        p->state = ST_TYPE;
        return EDGEQ_NEED_MORE;
    case ST_TYPE:
        p->type = byte;
        p->crc = edgeq_crc16_update(p->crc, byte);
        p->state = ST_SEQ;
        return EDGEQ_NEED_MORE;
    case ST_SEQ:
        p->seq = byte;
        p->crc = edgeq_crc16_update(p->crc, byte);
        p->state = ST_LEN_LO;
        return EDGEQ_NEED_MORE;
    case ST_LEN_LO:
        p->length = byte;
        p->crc = edgeq_crc16_update(p->crc, byte);
        p->state = ST_LEN_HI;
        return EDGEQ_NEED_MORE;
    case ST_LEN_HI:
        p->length = (uint16_t)(p->length | ((uint16_t)byte << 8));
        p->crc = edgeq_crc16_update(p->crc, byte);
        if (p->length > EDGEQ_MAX_PAYLOAD) {
            p->state = ST_SOF; /* hunt again from the next byte */
            return EDGEQ_BAD_LENGTH;
        }
        p->pos = 0;
        p->state = p->length ? ST_PAYLOAD : ST_CRC_LO;
        return EDGEQ_NEED_MORE;
    case ST_PAYLOAD:
        p->payload[p->pos++] = byte;
        p->crc = edgeq_crc16_update(p->crc, byte);
        if (p->pos == p->length) p->state = ST_CRC_LO;
        return EDGEQ_NEED_MORE;
    case ST_CRC_LO:
        p->crc_rx = byte;
        p->state = ST_CRC_HI;
        return EDGEQ_NEED_MORE;
    case ST_CRC_HI:
        p->crc_rx = (uint16_t)(p->crc_rx | ((uint16_t)byte << 8));
        p->state = ST_SOF;
        return p->crc_rx == p->crc ? EDGEQ_FRAME_READY : EDGEQ_BAD_CRC;
    default:
        p->state = ST_SOF;
        return EDGEQ_NEED_MORE;
    }
}

static size_t put_tensor(uint8_t *out, size_t cap, size_t at, const edgeq_tensor_info *t) {
    size_t need, i;
    uint32_t bits;
    if (t->rank > EDGEQ_MAX_RANK) return 0;
    need = 2u + 4u * t->rank + 8u;
    if (at + need > cap) return 0;
    out[at++] = t->dtype;
    out[at++] = t->rank;
    for (i = 0; i < t->rank; i++, at += 4) put_u32(out + at, t->dims[i]);
    memcpy(&bits, &t->scale, sizeof bits); /* IEEE-754 binary32, sent little-endian */
    put_u32(out + at, bits);
    put_u32(out + at + 4, (uint32_t)t->zero_point);
    return at + 8;
}

size_t edgeq_build_hello_reply(uint8_t *out, size_t cap, const uint8_t model_sha256[32],
                               uint32_t arena_size, uint32_t arena_used,
                               const edgeq_tensor_info *inputs, uint8_t n_inputs,
                               const edgeq_tensor_info *outputs, uint8_t n_outputs) {
    size_t at = 0;
    uint8_t i;
    if (cap < 1u + 2u + 32u + 8u + 1u) return 0;
    out[at++] = EDGEQ_PROTOCOL_VERSION;
    put_u16(out + at, (uint16_t)EDGEQ_MAX_PAYLOAD);
    at += 2;
    memcpy(out + at, model_sha256, 32);
    at += 32;
    put_u32(out + at, arena_size);
    put_u32(out + at + 4, arena_used);
    at += 8;
    out[at++] = n_inputs;
    for (i = 0; i < n_inputs; i++)
        if ((at = put_tensor(out, cap, at, &inputs[i])) == 0) return 0;
    if (at + 1 > cap) return 0;
    out[at++] = n_outputs;
    for (i = 0; i < n_outputs; i++)
        if ((at = put_tensor(out, cap, at, &outputs[i])) == 0) return 0;
    return at;
}

size_t edgeq_build_infer_reply(uint8_t *out, size_t cap, uint32_t time, uint8_t unit, uint32_t count,
                               const uint8_t *output, size_t output_len) {
    if (cap < EDGEQ_INFER_REPLY_HEADER + output_len) return 0;
    if (output && output_len) memmove(out + EDGEQ_INFER_REPLY_HEADER, output, output_len);
    put_u32(out, time);
    out[4] = unit;
    put_u32(out + 5, count);
    return EDGEQ_INFER_REPLY_HEADER + output_len;
}

size_t edgeq_build_error(uint8_t *out, size_t cap, uint8_t code, const char *message) {
    size_t n = message ? strlen(message) : 0;
    if (cap < 1) return 0;
    out[0] = code;
    if (n > cap - 1) {
        n = cap - 1;
        /* do not cut a UTF-8 sequence in half: back off over continuation bytes */
        while (n > 0 && ((uint8_t)message[n] & 0xC0u) == 0x80u) n--;
    }
    if (n) memcpy(out + 1, message, n);
    return 1 + n;
}
