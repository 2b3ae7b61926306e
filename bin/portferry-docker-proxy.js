#!/usr/bin/env node
// dockerd's "userland-proxy-path" (see docs/docker.md). Loads only the docker shim's modules.
import { main } from '../dist/docker/main.js';
await main(process.argv.slice(2), process.env);
