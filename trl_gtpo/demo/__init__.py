"""The offline default: the packaged SmolLM2 model, the packaged math data sets, and the default prompt."""
