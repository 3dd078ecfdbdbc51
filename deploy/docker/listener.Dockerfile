# tapwire-listener image: the binary, /etc/tapwire/listener.toml and the spool directory of the
# Debian package, run by an unprivileged user whose only privilege is raw sockets (a file
# capability on the binary). Build from the repository root:
#   docker build -f deploy/docker/listener.Dockerfile -t tapwire-listener \
#     --build-arg TAPWIRE_REVISION="$(git rev-parse --short=12 HEAD)" .
# Run on the host's network with every capability dropped but NET_RAW:
#   docker run -d --network host --cap-drop ALL --cap-add NET_RAW \
#     -v /etc/tapwire/listener.toml:/etc/tapwire/listener.toml:ro \
#     -v tapwire-spool:/var/lib/tapwire-listener tapwire-listener
# Under no-new-privileges (Kubernetes' allowPrivilegeEscalation: false) the kernel ignores file
# capabilities: run as user 0 with NET_RAW only instead. deploy/packages.md says more.

FROM rust:1.95-bookworm AS build
# Debian's current packages: pinning versions breaks the build once the mirror moves on.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpcap-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .git is not copied in: --version names the revision passed here (else "unknown").
ARG TAPWIRE_REVISION=unknown
COPY . .
RUN cargo build --release --locked -p tapwire-listener \
 && strip target/release/tapwire-listener

FROM debian:bookworm-slim
COPY --from=build /src/target/release/tapwire-listener /usr/bin/tapwire-listener
COPY deploy/config/listener.toml /etc/tapwire/listener.toml
# Runtime libraries only (unpinned, as above); libcap2-bin is there just long enough to set the
# file capability, here rather than in the build stage since COPY may drop extended attributes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpcap0.8 ca-certificates libcap2-bin \
 && setcap cap_net_raw=ep /usr/bin/tapwire-listener \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin tapwire \
 && install -d -o tapwire -g root -m 0770 /var/lib/tapwire-listener
USER 10001:10001
ENTRYPOINT ["/usr/bin/tapwire-listener"]
CMD ["--config", "/etc/tapwire/listener.toml"]
