// The namespace dialer's tests (helper.test.ts) with the native socket helper turned off
// (PORTFERRY_NSD=0): the Node helper, the fallback when pf-nsd cannot be built, started or fails
// its self-test, must still pass them all.
process.env['PORTFERRY_NSD'] = '0';
await import('./helper.test.js');
