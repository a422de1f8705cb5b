# raybeam and your queues on Ray's own image, for cluster/kuberay/rayservice.yaml (or any
# cluster that runs containers). Build from the root of the raybeam checkout:
#
#   docker build -t YOUR-REGISTRY/raybeam:0.1.0 .
#   docker build --build-arg APP=path/to/your/queues -t YOUR-REGISTRY/raybeam:0.1.0 .
#
# The tag pins the Ray (2.60.0) and Python (3.11) that raybeam is built for. The -gpu
# variant carries CUDA and runs on CPU nodes as well, so one image serves every group;
# for a CPU-only cluster, --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311 is smaller.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

# raybeam from this checkout: it is not published on PyPI.
COPY --chown=ray:users pyproject.toml README.md /home/ray/raybeam/
COPY --chown=ray:users raybeam /home/ray/raybeam/raybeam
COPY --chown=ray:users serve_app /home/ray/raybeam/serve_app
RUN pip install --no-cache-dir /home/ray/raybeam

# The queues that serve_app.deployment:build_app registers (args.app in serveConfigV2):
# a folder with app.py, and a requirements.txt beside it if the queues need more packages.
ARG APP=cluster/example
COPY --chown=ray:users ${APP} /home/ray/app
RUN if [ -f /home/ray/app/requirements.txt ]; then \
        pip install --no-cache-dir -r /home/ray/app/requirements.txt; \
    fi
WORKDIR /home/ray
