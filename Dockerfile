# The operator image: a static binary on a distroless base, running as a non-root user.
#   docker build -t agent-operator:0.1.0 .      (the chart's default image: agent-operator:<appVersion>)
FROM rust:1.95-bookworm AS build
# musl: a fully static binary, so the runtime image needs no libc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin agent-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/agent-operator /agent-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/agent-operator"]
CMD ["run"]
