// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by the PROXY protocol v2
// PP2_TYPE_CRC32C TLV, iSCSI and SCTP. Not zlib's CRC-32 (polynomial 0xEDB88320): a receiver such as
// haproxy rejects a header whose checksum was computed with the wrong polynomial.
//
// Table-driven, one byte at a time: a PROXY header is at most a few hundred bytes and is
// checksummed once per connection or UDP flow, so a slicing-by-8 table would not pay for itself.

const TABLE: Uint32Array = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/**
 * The CRC-32C of `buf`, as an unsigned 32-bit number. `seed` is the CRC of the bytes before
 * `buf` (0 to start), so `crc32c(b, crc32c(a))` equals `crc32c(a ++ b)`.
 */
export function crc32c(buf: Uint8Array, seed = 0): number {
  let crc = ~seed >>> 0;
  for (let i = 0; i < buf.length; i++) {
    // Indexes are in range: `buf[i]` exists for i < length and the table index is masked to a byte.
    crc = (TABLE[(crc ^ (buf[i] as number)) & 0xff] as number) ^ (crc >>> 8);
  }
  return ~crc >>> 0;
}
