// edgeq test harness for Arduino boards (any core with Serial and micros()).
//
// Copy the generated files from the top of the firmware folder next to this sketch (the .cc files
// renamed .cpp; README.md shows the commands), install the TFLM library from
// github.com/tensorflow/tflite-micro-arduino-examples (not the old 2.4.0-ALPHA "Arduino_TensorFlowLite"
// of the Library Manager, whose MicroInterpreter takes an ErrorReporter), then build and upload with the Arduino IDE or arduino-cli.
//
// Serial (USB CDC on most boards) carries binary protocol frames: nothing else may print to it
// while a frame is sent. TFLM's own error messages go to the same port on some boards; the host
// skips such text between frames.

#include <TensorFlowLite.h>  // names the TFLM library for the Arduino builder (tflite-micro-arduino-examples)

#include "edgeq_harness.h"
#include "edgeq_platform.h"

#ifndef EDGEQ_BAUD
#define EDGEQ_BAUD 115200
#endif

extern "C" size_t edgeq_platform_read(uint8_t *buf, size_t cap) {
  size_t n = 0;
  while (n < cap && Serial.available() > 0) {
    int c = Serial.read();
    if (c < 0) break;
    buf[n++] = (uint8_t)c;
  }
  return n;
}

extern "C" void edgeq_platform_write(const uint8_t *buf, size_t len) {
  unsigned stalls = 0;
  while (len) {
    size_t n = Serial.write(buf, len);  // may send fewer bytes when the TX buffer is full
    if (n == 0) {
      // USB CDC with no host attached accepts nothing: give up on this reply rather than hang;
      // the host resends what it does not get.
      if (++stalls > 1000) return;
      delay(1);
      continue;
    }
    stalls = 0;
    buf += n;
    len -= n;
  }
  Serial.flush();
}

extern "C" uint32_t edgeq_platform_micros(void) { return (uint32_t)micros(); }  // wraps at 2^32

void setup() {
  Serial.begin(EDGEQ_BAUD);
  edgeq_harness_setup();
}

void loop() { edgeq_harness_poll(); }
