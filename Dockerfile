# Builds both binaries; docker-compose.yml runs the same image as `api` and `worker`.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin api --bin worker

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 chatbot \
    && mkdir /keys && chown chatbot /keys
COPY --from=build /src/target/release/api /src/target/release/worker /usr/local/bin/
USER chatbot
ENV BIND_ADDR=0.0.0.0:8000
EXPOSE 8000
CMD ["api"]
