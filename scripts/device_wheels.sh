# Sourced by the scripts that run on a GPU machine without internet access (gpu_bench.sh,
# gpu_minilm_study.sh).
# Its image has jax, flax and optax but transformers 5.x (no Flax classes) and no ml_collections
# or tensorboardX, so those travel as wheels in a git-ignored folder (../shared/gpu/README.md).

# download_device_wheels DIR: run once on a machine with internet access; fetches the wheels for
# the GPU image's Python 3.12.
download_device_wheels() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$1" transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.0 ml_collections==1.1.0 \
    tensorboardX==2.6.5
}

# install_device_wheels DIR: run on the GPU machine; installs DIR/*.whl into /tmp/site and puts it and the
# project on PYTHONPATH. Without wheels the packages already installed are used. Fails (status 3)
# when the install does.
install_device_wheels() {
  if compgen -G "$1/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$1"/*.whl \
      || { echo "wheel install failed"; return 3; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed $(ls "$1"/*.whl | xargs -n1 basename | tr '\n' ' ')into /tmp/site"
  else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "no wheels in $1: using the packages already installed"
  fi
  export TOKENIZERS_PARALLELISM=false
}
