# The image compose.yaml runs for the worker, the dashboard and the demo's producer. It is built the
# way users install TaskLib: the wheel is built in one stage and only the wheel (with its
# dependencies) is installed in the final one. scripts/release.sh is the recipe; the test suite's
# release tier runs the same script, so what this image installs is what the tests exercise.
FROM python:3.12-slim AS build
RUN pip install --no-cache-dir build
COPY . /src
RUN sh /src/scripts/release.sh build /src /dist

FROM python:3.12-slim
COPY --from=build /dist/*.whl /tmp/dist/
COPY scripts/release.sh /tmp/release.sh
RUN sh /tmp/release.sh install /tmp/dist/tasklib-*.whl /opt/tasklib \
    && rm -rf /tmp/dist /tmp/release.sh \
    && useradd --system --create-home --uid 10001 tasklib
ENV PATH=/opt/tasklib/bin:$PATH PYTHONUNBUFFERED=1
USER tasklib
WORKDIR /home/tasklib
# The example tasks ship in the package (tasklib.demo.tasks); an app of your own is installed into
# /opt/tasklib in an image built FROM this one, or mounted and named with --app.
CMD ["tasklib", "--help"]
