"""Calibration: DOBI bound search (dobi), DQC finetuning (calibrate), method presets (methods).

Import from the submodules (``compsrt.calib.calibrate.calibrate``); this package file stays
empty so that the model's quantizers can import ``dobi`` without pulling in the trainer.
"""
