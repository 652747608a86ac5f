# fleetrun: build stage installs everything (native addons compile against
# the image's own Node 24 headers), runtime stage keeps production deps only.
# Untested here (no Docker engine on the development machines).

FROM node:24-bookworm-slim AS build
WORKDIR /app
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
# npm ci's postinstall (checks ssh2's native crypto binding loads; here it is built
# against the image's own Node 24 headers, so it normally has nothing to do).
COPY scripts/native-addons.js ./scripts/
# The image brings Node 24; the `node` dev dependency is for bare-metal checkouts.
RUN npm ci --omit=dev --no-audit --no-fund
COPY tsconfig.json buf.yaml buf.gen.yaml ./
COPY proto ./proto
COPY src ./src
COPY openapi ./openapi

FROM node:24-bookworm-slim AS runtime
# The built-in local machine and the remote scripts need these on the host that runs them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends util-linux coreutils procps tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /home/fleetrun --shell /bin/sh fleetrun \
 && mkdir -p /data && chown fleetrun:fleetrun /data && chmod 0700 /data
# /data is the service user's alone (0700): a named volume takes this mode and
# owner on first use; the service also narrows a wider one at start.
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/src ./src
COPY --from=build /app/openapi ./openapi
USER fleetrun
ENV HOST=0.0.0.0 \
    PORT=8080 \
    FLEETRUN_DATA_DIR=/data \
    NODE_ENV=production
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "src/main.ts"]
