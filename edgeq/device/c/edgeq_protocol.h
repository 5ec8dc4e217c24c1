/* edgeq device protocol, version 1 -- framing, CRC and payload builders. C99, no malloc, no TFLM.
 *
 * Normative description: docs/protocol.md. The host side is edgeq/device/protocol.py; both must
 * stay byte-for-byte compatible (tests/unit/test_protocol.py runs this code against it).
 *
 * Frame: SOF 0xA5 | version u8 | type u8 | seq u8 | length u16 LE | payload | CRC16 u16 LE
 * CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over version..payload.
 */
#ifndef EDGEQ_PROTOCOL_H
#define EDGEQ_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGEQ_SOF 0xA5u
#define EDGEQ_PROTOCOL_VERSION 1u
#define EDGEQ_HEADER_SIZE 6u /* SOF, version, type, seq, length(2) */
#define EDGEQ_CRC_SIZE 2u
#define EDGEQ_FRAME_OVERHEAD (EDGEQ_HEADER_SIZE + EDGEQ_CRC_SIZE)

/* Build settings shared by every translation unit that includes this header (EDGEQ_MAX_PAYLOAD must
 * be the same everywhere: it sizes edgeq_parser). A generated firmware tree writes its own
 * edgeq_config.h next to this file; the packaged default one sets nothing. */
#include "edgeq_config.h"

/* Largest payload this build accepts and sends: edgeq_config.h, or -DEDGEQ_MAX_PAYLOAD=n given to
 * every file (<= 65535). */
#ifndef EDGEQ_MAX_PAYLOAD
#define EDGEQ_MAX_PAYLOAD 4096u
#endif
#if EDGEQ_MAX_PAYLOAD > 65535u
#error "EDGEQ_MAX_PAYLOAD must fit the u16 length field"
#endif
#define EDGEQ_MAX_FRAME (EDGEQ_MAX_PAYLOAD + EDGEQ_FRAME_OVERHEAD)

#ifndef EDGEQ_MAX_RANK
#define EDGEQ_MAX_RANK 8u
#endif

enum edgeq_frame_type {
    EDGEQ_HELLO = 0x01,
    EDGEQ_INFER = 0x02,
    EDGEQ_HELLO_REPLY = 0x81,
    EDGEQ_INFER_REPLY = 0x82,
    EDGEQ_ERROR = 0xEE
};

enum edgeq_error_code {
    EDGEQ_ERR_BAD_CRC = 1,
    EDGEQ_ERR_BAD_LENGTH = 2,
    EDGEQ_ERR_UNKNOWN_TYPE = 3,
    EDGEQ_ERR_BAD_VERSION = 4,
    EDGEQ_ERR_INVOKE_FAILED = 5,
    EDGEQ_ERR_NOT_READY = 6,
    EDGEQ_ERR_BAD_PAYLOAD = 7
};

/* INSTRUCTIONS: an emulated core that counts instructions (QEMU with -icount shift=0). */
enum edgeq_time_unit { EDGEQ_TIME_US = 0, EDGEQ_TIME_CYCLES = 1, EDGEQ_TIME_INSTRUCTIONS = 2 };

/* TFLite schema TensorType values. */
enum edgeq_dtype {
    EDGEQ_DTYPE_FLOAT32 = 0,
    EDGEQ_DTYPE_FLOAT16 = 1,
    EDGEQ_DTYPE_INT32 = 2,
    EDGEQ_DTYPE_UINT8 = 3,
    EDGEQ_DTYPE_INT64 = 4,
    EDGEQ_DTYPE_INT16 = 7,
    EDGEQ_DTYPE_INT8 = 9
};

typedef enum {
    EDGEQ_NEED_MORE = 0,
    EDGEQ_FRAME_READY = 1, /* parser->version/type/seq/length/payload hold a valid frame */
    EDGEQ_BAD_CRC = 2,     /* a whole frame arrived with a wrong CRC; type/seq are untrusted */
    EDGEQ_BAD_LENGTH = 3   /* a header announced length > EDGEQ_MAX_PAYLOAD; length holds it */
} edgeq_status;

typedef struct {
    uint8_t state;
    uint8_t version;
    uint8_t type;
    uint8_t seq;
    uint16_t length;
    uint16_t pos;
    uint16_t crc;    /* running CRC over version..payload */
    uint16_t crc_rx; /* CRC received on the wire */
    uint8_t payload[EDGEQ_MAX_PAYLOAD];
} edgeq_parser;

uint16_t edgeq_crc16_update(uint16_t crc, uint8_t byte);
uint16_t edgeq_crc16(const uint8_t *data, size_t len); /* CRC-16/CCITT-FALSE, init 0xFFFF */

/* Writes a whole frame into out; returns its size, or 0 if cap is too small or len too big.
 * payload may alias out + EDGEQ_HEADER_SIZE (build payloads in place, then frame them). */
size_t edgeq_encode_frame(uint8_t *out, size_t cap, uint8_t type, uint8_t seq,
                          const uint8_t *payload, size_t len);

void edgeq_parser_init(edgeq_parser *p);
/* Drop any partial frame: call when the line was idle mid-frame (see docs: inter-byte timeout). */
void edgeq_parser_reset(edgeq_parser *p);
/* Nonzero while a frame is partly received (after SOF, before its last CRC byte): the state in
 * which the inter-byte timeout applies. */
int edgeq_parser_busy(const edgeq_parser *p);
/* Returns EDGEQ_NEED_MORE for most bytes. After FRAME_READY the frame stays readable until the
 * next call to edgeq_parser_feed. */
edgeq_status edgeq_parser_feed(edgeq_parser *p, uint8_t byte);

typedef struct {
    uint8_t dtype; /* enum edgeq_dtype */
    uint8_t rank;  /* <= EDGEQ_MAX_RANK */
    uint32_t dims[EDGEQ_MAX_RANK];
    float scale;
    int32_t zero_point;
} edgeq_tensor_info;

/* Payload builders: each returns the payload size written to out, or 0 if it does not fit. */
size_t edgeq_build_hello_reply(uint8_t *out, size_t cap, const uint8_t model_sha256[32],
                               uint32_t arena_size, uint32_t arena_used,
                               const edgeq_tensor_info *inputs, uint8_t n_inputs,
                               const edgeq_tensor_info *outputs, uint8_t n_outputs);
/* INFER_REPLY = time u32 | unit u8 | count u32 | output bytes. count is the number of inferences
 * since boot, this one included (the host detects a device reset when it goes down). output may
 * be NULL when the caller already copied output_len bytes to out + EDGEQ_INFER_REPLY_HEADER
 * (avoids a second buffer). */
#define EDGEQ_INFER_REPLY_HEADER 9u
size_t edgeq_build_infer_reply(uint8_t *out, size_t cap, uint32_t time, uint8_t unit, uint32_t count,
                               const uint8_t *output, size_t output_len);
/* ERROR = code u8 | UTF-8 message (truncated to fit cap). message may be NULL. */
size_t edgeq_build_error(uint8_t *out, size_t cap, uint8_t code, const char *message);

#ifdef __cplusplus
}
#endif
#endif /* EDGEQ_PROTOCOL_H */
