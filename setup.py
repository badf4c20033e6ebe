from setuptools import find_packages, setup

setup(
    name="deepseek-ocr",
    version="0.1.0",
    description="A pure-PyTorch DeepSeek-OCR that loads the official checkpoint and reproduces its outputs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["deepseek_ocr", "deepseek_ocr.*"]),
    package_data={"deepseek_ocr": ["assets/tokenizer/*.json", "serving/static/*"]},
    install_requires=[
        "torch>=2.4",
        "tokenizers>=0.19",
        "huggingface_hub>=0.34",  # 0.34 brought the `hf` command our messages tell users to run
        # Works from 10.4 (the image, input and post-processing tests pass with it); Pillow 13 is
        # what the bit-exact pixel parity was recorded with (older resampling rounds a few bf16
        # pixels of the resized views differently), so the test extra asks for it.
        "pillow>=10.4",
        "numpy>=1.24",
        "pypdfium2>=4.30",  # PDF pages (Apache-2.0/BSD; PyMuPDF would be AGPL)
        "tqdm>=4.66",  # the command's progress display
        # Adapters (PEFT's adapter_model.safetensors) and training checkpoints are written with
        # it; checkpoints themselves are read and written by our own code (see weights/).
        "safetensors>=0.4",
    ],
    entry_points={"console_scripts": ["deepseek-ocr = deepseek_ocr.cli:main"]},
    extras_require={
        "test": [
            "pytest>=8",
            "pillow>=13",  # the parity tests compare pixels bit for bit
            "safetensors>=0.4",  # an independent reader to check our hand-written one against
            "triton>=3.2; platform_system == 'Linux' and platform_machine == 'x86_64'",  # kernel tests
            "rapidfuzz>=3",  # the metric tests (deepseek_ocr.evaluation)
            "sacrebleu>=2",
            "pyarrow>=15",  # the Parquet reader's tests (deepseek_ocr.training.data)
            "matplotlib>=3.5",  # the research harness's plots are drawn in its tests
            "jieba>=0.42",  # Fox's Chinese word segmentation (research extra's optional): its test runs
            # The server's tests (tests/test_serving_*.py): the server itself (the serve extra),
            # the official openai client against it, httpx for /v1/ocr and raw HTTP, and
            # selenium driving Debian's chromium + chromedriver (installed by .ci/run) for the page.
            "starlette>=0.40", "uvicorn>=0.30", "python-multipart>=0.0.9",
            "openai>=1.40", "httpx>=0.27", "selenium>=4.20",
        ],
        # Metrics (deepseek_ocr.evaluation): rapidfuzz's C++ Levenshtein for CER/WER/NED,
        # sacrebleu for BLEU.
        "eval": ["rapidfuzz>=3", "sacrebleu>=2"],
        # Our GPU kernels. CUDA builds of torch bring their own triton, so only a CPU-only
        # install lacks it; there it serves the kernel tests in interpreter mode only.
        "kernels": ["triton>=3.2; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        # Training data: pyarrow reads Parquet as Hugging Face datasets exports it.
        "train": ["pyarrow>=15"],
        # `deepseek-ocr research` (deepseek_ocr.research): plots (matplotlib) and the metrics it
        # records (the eval extra's rapidfuzz and sacrebleu). Chinese Fox word sets: add jieba.
        "research": ["matplotlib>=3.5", "rapidfuzz>=3", "sacrebleu>=2"],
        # The learning run's plot (benchmarks/learning_run.py); the server's load generator
        # (benchmarks/bench_server.py) is an httpx client.
        "bench": ["matplotlib>=3.5", "httpx>=0.27"],
        # `deepseek-ocr serve` (deepseek_ocr.serving): Starlette (the ASGI toolkit under FastAPI,
        # without its pydantic layer: bodies are checked by hand to answer in OpenAI's error
        # shape), uvicorn to run it, python-multipart for /v1/ocr uploads; httptools and uvloop
        # make uvicorn's HTTP parsing and event loop faster where they install.
        "serve": ["starlette>=0.40", "uvicorn>=0.30", "python-multipart>=0.0.9",
                  "httptools>=0.6; platform_python_implementation == 'CPython'",
                  "uvloop>=0.19; sys_platform != 'win32' and platform_python_implementation == 'CPython'"],
        # Optional for `deepseek-ocr train`: TensorBoard event files beside log.jsonl.
        "tensorboard": ["tensorboard>=2.14"],
    },
)
