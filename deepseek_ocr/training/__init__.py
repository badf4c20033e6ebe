"""Fine-tuning: the official objective, data readers, what is trained (presets, LoRA), the loop.

The modules here depend on the model (`modeling`, `decoder`, `vision`, `processing`), never on
the CLI; `DeepseekOCR.loss` and friends in `ocr.py` are thin front doors to them.
"""
