// The defaults of every option, by field name, come from the one table in options.ts.
export { DEFAULTS } from './options.js';
