// `-p` port specs: `[hostIP:]hostPort[-end]:containerIP:containerPort[-end][/tcp|/udp]`, IPv6 in
// brackets. Parsing is pure and reports problems instead of throwing, so the caller can gather
// every problem of every spec before deciding anything.
import net from 'node:net';
import type { Protocol } from '../api.js';
import { PortferryError } from '../errors.js';
import type { RawMapping } from './validate.js';

export const SPEC_FORM = '[hostIP:]hostPort[-end]:containerIP:containerPort[-end][/tcp|/udp]';

/** Splits on ':' outside brackets; keeps the brackets on bracketed fields. */
function splitFields(body: string): string[] | null {
  const fields: string[] = [];
  let current = '';
  let inBracket = false;
  for (const ch of body) {
    if (ch === '[') {
      if (inBracket || current !== '') return null;
      inBracket = true;
      current += ch;
    } else if (ch === ']') {
      if (!inBracket) return null;
      inBracket = false;
      current += ch;
    } else if (ch === ':' && !inBracket) {
      fields.push(current);
      current = '';
    } else {
      current += ch;
    }
  }
  if (inBracket) return null;
  fields.push(current);
  return fields;
}

function unbracket(field: string): { ip: string; bracketed: boolean } {
  if (field.startsWith('[') && field.endsWith(']')) return { ip: field.slice(1, -1), bracketed: true };
  return { ip: field, bracketed: false };
}

/**
 * Parses one spec into a raw mapping (ports and IPs still as text; validate.ts checks them).
 * Returns the problems instead when the shape is wrong.
 */
export function parseSpec(spec: string, place: string): RawMapping | PortferryError {
  const syntax = (why: string): PortferryError =>
    new PortferryError('PF_SPEC_SYNTAX', `${place}: "${spec}": ${why}; expected ${SPEC_FORM}`);
  const trimmed = spec.trim();
  if (trimmed === '') return syntax('the spec is empty');

  let body = trimmed;
  let protocol: Protocol | string | undefined;
  const slash = trimmed.lastIndexOf('/');
  if (slash !== -1 && !trimmed.slice(slash).includes(']') && !trimmed.slice(slash).includes(':')) {
    protocol = trimmed.slice(slash + 1).toLowerCase();
    body = trimmed.slice(0, slash);
  }

  const fields = splitFields(body);
  if (fields === null) return syntax('unbalanced brackets around an IPv6 address');
  if (fields.length > 4) {
    return syntax(
      fields.some((f) => /^[0-9a-f]*$/i.test(f) && f.length > 0 && !/^\d+$/.test(f)) || body.includes('::')
        ? 'an IPv6 address must be written in brackets, e.g. [::1]:8443:[fd00::2]:443'
        : `it has ${fields.length} ':'-separated fields, at most 4 are allowed`,
    );
  }
  if (fields.length < 3) {
    return syntax(
      fields.length === 2
        ? 'the container IP is missing (portferry forwards to an address: write hostPort:containerIP:containerPort)'
        : 'too few fields',
    );
  }
  const [hostIPField, hostPort, containerIPField, containerPort] =
    fields.length === 4 ? (fields as [string, string, string, string]) : ([undefined, ...fields] as [undefined, string, string, string]);

  if (hostIPField !== undefined) {
    const h = unbracket(hostIPField);
    if (h.ip === '') return syntax('the host IP before the first ":" is empty (leave out the host IP and its ":" entirely)');
    if (net.isIPv6(h.ip) && !h.bracketed) return syntax('an IPv6 host IP must be written in brackets');
    if (h.bracketed && !net.isIPv6(h.ip)) return syntax(`brackets are for IPv6 addresses only: write the host IP ${h.ip} without them`);
  }
  const c = unbracket(containerIPField);
  if (net.isIPv6(c.ip) && !c.bracketed) return syntax('an IPv6 container IP must be written in brackets');
  if (c.bracketed && !net.isIPv6(c.ip)) return syntax(`brackets are for IPv6 addresses only: write the container IP ${c.ip} without them`);

  const raw: { -readonly [K in keyof RawMapping]: RawMapping[K] } = {
    place,
    source: `-p ${spec}`,
    hostPort,
    containerIP: c.ip,
    containerPort,
  };
  if (hostIPField !== undefined) raw.hostIP = unbracket(hostIPField).ip;
  if (protocol !== undefined) raw.protocol = protocol;
  return raw;
}
