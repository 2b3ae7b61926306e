// portferry's error codes as CNI error codes (docs/errors.md, "CNI plugin error codes"; a test
// keeps that table and this one in sync). The spec's own codes where one fits, ours from 100 up.
import { PortferryError, type ErrorCode } from '../errors.js';

/** The spec's codes: 1 incompatible version, 4 bad environment, 6 decode, 7 invalid config, 11 try again later. */
export const CNI_CODES: Readonly<Partial<Record<ErrorCode, number>>> = {
  PF_CNI_VERSION: 1,
  PF_CNI_ENV: 4,
  PF_CNI_DECODE: 6,
  PF_CNI_CONFIG: 7,
  PF_CONFIG_INVALID: 7,
  PF_CONFIG_VALUE: 7,
  PF_CONFIG_MISSING: 7,
  PF_PORT_INVALID: 7,
  PF_PROTOCOL_INVALID: 7,
  PF_IP_INVALID: 7,
  PF_RULES_BUSY: 11,
  PF_API_UNREACHABLE: 11,
  PF_SHUTTING_DOWN: 11,
  // ours
  PF_RULES_APPLY: 101,
  PF_RULES_CHECK: 102,
  PF_RULES_TOOL_MISSING: 103,
  PF_CNI_CHECK: 104,
  PF_CONFLICT: 105,
  PF_BIND_ADDRINUSE: 106,
  PF_BIND_EACCES: 107,
  PF_BIND_ADDRNOTAVAIL: 108,
  PF_BIND_FAILED: 109,
  PF_NETNS_INVALID: 110,
  PF_API_REQUEST: 111,
};

/** Any other PF_ code (its name is in msg). */
export const CNI_CODE_OTHER = 100;
/** STATUS: the plugin cannot serve ADD (daemon down, tools missing). */
export const CNI_CODE_UNAVAILABLE = 50;

export interface CniErrorResult {
  readonly cniVersion: string;
  readonly code: number;
  readonly msg: string;
  readonly details: string;
}

/**
 * The daemon refuses a set of mappings as one PF_CONFIG_INVALID listing each problem; when one of
 * them is a conflict (the HTTP 409 rule of src/control/server.ts) the runtime must hear 105, the
 * documented "port held by another owner", not 7 "invalid network config" (issue 20, 7c).
 */
function cniCodeOf(err: PortferryError): number {
  if (err.code === 'PF_CONFIG_INVALID' && err.problems.some((p) => p.code === 'PF_CONFLICT')) return CNI_CODES.PF_CONFLICT ?? CNI_CODE_OTHER;
  return CNI_CODES[err.code] ?? CNI_CODE_OTHER;
}

/**
 * The error JSON for stdout. `unavailable`: STATUS's own finding (daemon down, tools missing) is
 * reported as 50. Anything not a PortferryError is a bug: code 100 with its text.
 */
export function cniError(err: unknown, cniVersion: string, unavailable = false): CniErrorResult {
  if (err instanceof PortferryError) {
    const code = unavailable ? CNI_CODE_UNAVAILABLE : cniCodeOf(err);
    const problems = err.problems.map((p) => `${p.code}: ${p.message}`);
    return {
      cniVersion,
      code,
      msg: `${err.code}: ${err.message}`,
      details: [...problems, `hint: ${err.hint}`].join('\n'),
    };
  }
  const e = err instanceof Error ? err : new Error(String(err));
  return { cniVersion, code: CNI_CODE_OTHER, msg: `unexpected error: ${e.message}`, details: e.stack ?? '' };
}
