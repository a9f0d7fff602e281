# syntax=docker/dockerfile:1
# herald in a container: build with the Rust toolchain, run on a slim Debian as an unprivileged user.
#
#   docker build -t herald .
#   docker run --rm -p 8080:8080 --ulimit nofile=1048576:1048576 herald
#   docker run --rm -p 8080:8080 -v /etc/herald:/etc/herald:ro herald --config /etc/herald/herald.toml
#
# Every setting can also come from the environment as HERALD_<SECTION>_<KEY> (README, Configuration).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds (BuildKit); target/ is not in the image, so
# the binary is copied out in the same step. herald.dwp (its split debug info) stays in the build stage.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin herald \
    && install -m 0755 target/release/herald /usr/local/bin/herald

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin herald
COPY --from=build /usr/local/bin/herald /usr/local/bin/herald
COPY LICENSE-MIT LICENSE-APACHE /usr/share/doc/herald/
USER herald
# Inside a container, listen on every interface; publish the port with -p.
ENV HERALD_SERVER_LISTEN=0.0.0.0:8080
EXPOSE 8080
# herald drains on SIGTERM (close 1001 to every client, up to timeouts.shutdown_timeout): give docker stop
# more than that (docker stop -t 15).
STOPSIGNAL SIGTERM
# The slim image has no curl or wget: this health check speaks HTTP with bash's /dev/tcp, and assumes the
# port above. Remove it if you change the port, or let your orchestrator probe GET /healthz instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/herald"]
