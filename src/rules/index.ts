// Kernel DNAT rules as the CNI portmap plugin installs them: build (pure) → render (text) → apply.
export * from './model.js';
export * from './portmap-iptables.js';
export * from './portmap-nft.js';
export * from './apply.js';
