#!/usr/bin/env node
// The CNI plugin (docs/cni.md): install it as `portferry` in the CNI bin directory.
import '../dist/cni/main.js';
