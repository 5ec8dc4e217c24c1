"""edgeq: take a trained Keras model to a microcontroller, an IoT board or a phone.

Importing the package is cheap: nothing here imports TensorFlow. Heavy modules
(`edgeq.pipeline`, `edgeq.loading`, `edgeq.quantize`) import it when first used.
"""

__version__ = "0.1.0"
