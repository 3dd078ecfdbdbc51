# tapwire-replayer image: the binary and /etc/tapwire/replayer.toml of the Debian package, run by
# an unprivileged user with no capabilities. Build from the repository root:
#   docker build -f deploy/docker/replayer.Dockerfile -t tapwire-replayer \
#     --build-arg TAPWIRE_REVISION="$(git rev-parse --short=12 HEAD)" .
# Run:
#   docker run -d --cap-drop ALL -p 7070:7070 -p 9090:9090 \
#     -v /etc/tapwire/replayer.toml:/etc/tapwire/replayer.toml:ro tapwire-replayer

FROM rust:1.95-bookworm AS build
WORKDIR /src
# .git is not copied in: --version names the revision passed here (else "unknown").
ARG TAPWIRE_REVISION=unknown
COPY . .
RUN cargo build --release --locked -p tapwire-replayer \
 && strip target/release/tapwire-replayer

FROM debian:bookworm-slim
COPY --from=build /src/target/release/tapwire-replayer /usr/bin/tapwire-replayer
COPY deploy/config/replayer.toml /etc/tapwire/replayer.toml
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin tapwire \
 && install -d -o tapwire -g tapwire -m 0700 /var/lib/tapwire-replayer
USER 10001:10001
WORKDIR /var/lib/tapwire-replayer
# gRPC from the listeners; metrics, /healthz and /readyz.
EXPOSE 7070 9090
ENTRYPOINT ["/usr/bin/tapwire-replayer"]
CMD ["--config", "/etc/tapwire/replayer.toml"]
