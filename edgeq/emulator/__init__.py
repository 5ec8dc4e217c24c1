"""The emulator: the model in the runtime the device uses, before anything is emitted."""
