# The image compose.yaml runs for the worker, the dashboard and the demo producer.
FROM python:3.12-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir .
ENV PYTHONPATH=/app PYTHONUNBUFFERED=1
