/* edgeq device loop: answers the edgeq protocol (docs/protocol.md) over the platform hooks.
 *
 * Plain C99, no malloc, no TensorFlow Lite Micro: the model is described by an edgeq_model_desc
 * and run through a callback (edgeq_harness.cc supplies both for a TFLM model; the tests supply a
 * fake). Bytes come from edgeq_platform_read() and replies go out through edgeq_platform_write()
 * (edgeq_platform.h).
 *
 * Usage:
 *     static edgeq_device device;               // ~2 x EDGEQ_MAX_PAYLOAD bytes: keep it static
 *     edgeq_device_init(&device, &desc, my_infer, my_ctx);
 *     for (;;) edgeq_device_poll(&device);
 *
 * RAM: sizeof(edgeq_device) = parser (EDGEQ_MAX_PAYLOAD + 12) + one transmit frame
 * (EDGEQ_MAX_PAYLOAD + 8) + a EDGEQ_DEVICE_READ_CHUNK-byte read buffer + ~16 bytes; about 8.3 KB
 * with the default EDGEQ_MAX_PAYLOAD of 4096. The input tensors are read straight from the parser's
 * payload and the outputs are written straight into the transmit frame: no other copies.
 * Stack: under 100 bytes in edgeq_device_poll, plus whatever the infer callback uses.
 */
#ifndef EDGEQ_DEVICE_H
#define EDGEQ_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "edgeq_protocol.h"

#ifdef __cplusplus
extern "C" {
#endif

#if EDGEQ_MAX_PAYLOAD < 64u
#error "EDGEQ_MAX_PAYLOAD below 64 cannot carry a HELLO_REPLY"
#endif

/* A line idle for this long in the middle of a frame drops the partial frame (docs/protocol.md). */
#ifndef EDGEQ_INTERBYTE_TIMEOUT_US
#define EDGEQ_INTERBYTE_TIMEOUT_US 100000u
#endif

/* Bytes asked of edgeq_platform_read() per call. */
#ifndef EDGEQ_DEVICE_READ_CHUNK
#define EDGEQ_DEVICE_READ_CHUNK 32u
#endif

/* What HELLO_REPLY reports, and what INFER needs. Must outlive the device (keep it static). */
typedef struct {
    const uint8_t *model_sha256;       /* 32 bytes: SHA-256 of the .tflite compiled in */
    uint32_t arena_size;               /* tensor arena bytes available */
    uint32_t arena_used;               /* bytes used after AllocateTensors; 0 if unknown */
    const edgeq_tensor_info *inputs;   /* n_inputs entries, in the model's input order */
    uint8_t n_inputs;
    const edgeq_tensor_info *outputs;  /* n_outputs entries, in the model's output order */
    uint8_t n_outputs;
    size_t input_bytes;                /* sum of the input tensors' sizes: an INFER payload's size */
    size_t output_bytes;               /* sum of the output tensors' sizes */
    const char *not_ready;             /* NULL when the model can run; else why not (sent in
                                          ERROR NOT_READY to every INFER). HELLO is answered either way */
} edgeq_model_desc;

/* Runs one inference. `input` holds input_len (== desc.input_bytes) bytes: all input tensors,
 * concatenated in input order. Write exactly output_len (== desc.output_bytes) bytes to `output`
 * (all output tensors in order), set *time to the time Invoke() took and *unit to
 * EDGEQ_TIME_US or EDGEQ_TIME_CYCLES. Return 0 on success; otherwise set *error to a message
 * (a static string; it is sent to the host in ERROR INVOKE_FAILED) and return nonzero. */
typedef int (*edgeq_infer_fn)(void *ctx, const uint8_t *input, size_t input_len, uint8_t *output,
                              size_t output_len, uint32_t *time, uint8_t *unit, const char **error);

typedef struct {
    edgeq_parser parser;
    const edgeq_model_desc *model;
    edgeq_infer_fn infer;
    void *ctx;
    uint32_t count;        /* successful inferences since boot (INFER_REPLY's count) */
    uint32_t last_rx_us;   /* edgeq_platform_micros() when the last byte arrived */
    uint8_t rx[EDGEQ_DEVICE_READ_CHUNK];
    uint8_t tx[EDGEQ_MAX_FRAME]; /* one reply frame, built in place */
} edgeq_device;

/* Sets up `d` (no I/O). `m`, and `ctx` if the callback uses it, must stay valid while `d` is used;
 * the descriptor may still be filled in or changed afterwards (it is read on every request). */
void edgeq_device_init(edgeq_device *d, const edgeq_model_desc *m, edgeq_infer_fn fn, void *ctx);

/* Reads whatever bytes are waiting (edgeq_platform_read), answers every request they complete
 * (edgeq_platform_write, one reply frame per request) and applies the inter-byte timeout. Never
 * waits for input. Call it in the main loop, as often as possible. Returns the number of bytes
 * read (0: the line was idle, the caller may sleep briefly). */
size_t edgeq_device_poll(edgeq_device *d);

#ifdef __cplusplus
}
#endif
#endif /* EDGEQ_DEVICE_H */
