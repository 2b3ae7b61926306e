// Where the generated options table lives in the README: between two HTML comments.
export const OPTIONS_TABLE_BEGIN = '<!-- options-table:begin (generated from src/config/options.ts by `npm run docs:options`; do not edit) -->';
export const OPTIONS_TABLE_END = '<!-- options-table:end -->';

/** The text between the markers, or null when they are missing. */
export function extractOptionsTable(markdown: string): string | null {
  const start = markdown.indexOf(OPTIONS_TABLE_BEGIN);
  const end = markdown.indexOf(OPTIONS_TABLE_END);
  if (start === -1 || end === -1 || end < start) return null;
  return markdown.slice(start + OPTIONS_TABLE_BEGIN.length, end).trim();
}

/** The markdown with `table` between the markers (throws when they are missing). */
export function replaceOptionsTable(markdown: string, table: string): string {
  const start = markdown.indexOf(OPTIONS_TABLE_BEGIN);
  const end = markdown.indexOf(OPTIONS_TABLE_END);
  if (start === -1 || end === -1 || end < start) throw new Error('the options-table markers are missing from the README');
  return `${markdown.slice(0, start + OPTIONS_TABLE_BEGIN.length)}\n${table}\n${markdown.slice(end)}`;
}
