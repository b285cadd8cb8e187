//! Resuming inside a page. A step that filled a part mid-page commits the
//! page's cursor with what it took of that page: a line count and the id of
//! the last line taken. The upstream owes us no stable page: a re-read of the
//! cursor may hold resources added, removed or moved since, or end sooner,
//! so the id decides where the export resumes. A page in ascending id order
//! (the FHIR-server source asks for `_sort=_id`) resumes after every id up
//! to the last exported one, whichever were deleted meanwhile; otherwise a
//! page that no longer holds that line falls back to the line count (a
//! source whose pages re-read exactly, such as NDJSON files, gives the same
//! answer either way).

use crate::fhir::framing::read_head;

/// What of a re-read page was exported already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exported {
    /// Byte offset of the first line not exported yet.
    pub offset: usize,
    /// Lines before it.
    pub lines: u64,
    /// The whole page precedes the last exported line, which is further on
    /// (the page ends sooner than it did): keep skipping on the next page.
    pub carry: bool,
}

/// The exported prefix of `page` (`count` lines): on a page `ordered` by id
/// (and found so), every line whose id is at most `through`; else through
/// the line whose id is `through` when the page holds it, the whole page
/// when it has fewer than `skip` lines and not that line, else `skip` lines.
pub(crate) fn exported_prefix(
    page: &[u8],
    count: u64,
    skip: u64,
    through: Option<&str>,
    ordered: bool,
) -> Exported {
    if skip == 0 {
        return Exported {
            offset: 0,
            lines: 0,
            carry: false,
        };
    }
    if let Some(id) = through {
        if ordered && let Some(done) = ordered_prefix(page, id) {
            return done;
        }
        let mut offset = 0;
        for (i, line) in page.split_inclusive(|b| *b == b'\n').enumerate() {
            offset += line.len();
            if read_head(line).ok().and_then(|h| h.id) == Some(id) {
                return Exported {
                    offset,
                    lines: i as u64 + 1,
                    carry: false,
                };
            }
        }
        if count < skip {
            return Exported {
                offset: page.len(),
                lines: count,
                carry: true,
            };
        }
    }
    Exported {
        offset: offset_after_lines(page, skip),
        lines: skip.min(count),
        carry: false,
    }
}

/// The lines of an id-ordered page up to and including id `through`, or
/// `None` when the page is not in ascending byte order of ids after all (an
/// upstream that ignored `_sort`, or collates ids differently), so position
/// cannot be told from the ids.
fn ordered_prefix(page: &[u8], through: &str) -> Option<Exported> {
    let (mut offset, mut lines, mut found) = (0, 0u64, false);
    let mut previous: Option<&str> = None;
    for line in page.split_inclusive(|b| *b == b'\n') {
        let id = read_head(line).ok()?.id?;
        if previous.is_some_and(|p| p > id) {
            return None;
        }
        previous = Some(id);
        if id <= through {
            offset += line.len();
            lines += 1;
            found |= id == through;
        }
    }
    // Every line precedes the last exported one, which is not here: the
    // page ends sooner than it did, so the skip goes on past it.
    let carry = !found && offset == page.len();
    Some(Exported {
        offset,
        lines,
        carry,
    })
}

/// The id of the last line of `lines` (NDJSON), if it has one.
pub(crate) fn last_id(lines: &[u8]) -> Option<String> {
    let trimmed = lines.strip_suffix(b"\n").unwrap_or(lines);
    let last = trimmed.rsplit(|b| *b == b'\n').next()?;
    read_head(last).ok()?.id.map(str::to_string)
}

/// Byte offset just past the first `n` lines of `data`.
pub(crate) fn offset_after_lines(data: &[u8], n: u64) -> usize {
    if n == 0 {
        return 0;
    }
    let mut seen = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    data.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &[u8] = b"{\"resourceType\":\"Basic\",\"id\":\"a\"}\n{\"resourceType\":\"Basic\",\"id\":\"b\"}\n{\"resourceType\":\"Basic\",\"id\":\"c\"}\n";

    #[test]
    fn skips_whole_lines() {
        let d = b"a\nbb\nccc\n";
        assert_eq!(offset_after_lines(d, 0), 0);
        assert_eq!(offset_after_lines(d, 1), 2);
        assert_eq!(offset_after_lines(d, 3), 9);
        assert_eq!(offset_after_lines(d, 5), 9);
    }

    #[test]
    fn the_last_exported_id_decides_where_a_reread_page_resumes() {
        let line = PAGE.len() / 3;
        // Re-read exactly: the id and the count agree.
        assert_eq!(
            exported_prefix(PAGE, 3, 2, Some("b"), false),
            Exported {
                offset: 2 * line,
                lines: 2,
                carry: false
            }
        );
        // A resource before it vanished: the count would skip "c" as well.
        let shorter = &PAGE[line..];
        assert_eq!(
            exported_prefix(shorter, 2, 2, Some("b"), false),
            Exported {
                offset: line,
                lines: 1,
                carry: false
            }
        );
        // The page ends before the last exported line: all of it was exported.
        assert_eq!(
            exported_prefix(&PAGE[..line], 1, 2, Some("b"), false),
            Exported {
                offset: line,
                lines: 1,
                carry: true
            }
        );
        // The line is gone and the page is long enough: the count decides.
        assert_eq!(
            exported_prefix(PAGE, 3, 1, Some("z"), false),
            Exported {
                offset: line,
                lines: 1,
                carry: false
            }
        );
        // Nothing to skip, or no id recorded (chains stored before ids were).
        assert_eq!(exported_prefix(PAGE, 3, 0, Some("b"), false).lines, 0);
        assert_eq!(
            exported_prefix(PAGE, 3, 2, None, true),
            Exported {
                offset: 2 * line,
                lines: 2,
                carry: false
            }
        );
        assert_eq!(last_id(&PAGE[..2 * line]).as_deref(), Some("b"));
        assert_eq!(last_id(b""), None);
    }

    #[test]
    fn an_id_ordered_page_resumes_after_the_last_exported_id_even_when_it_was_deleted() {
        let line = PAGE.len() / 3;
        // "b" was deleted: the count would skip "c", which was never exported.
        let without_b = [&PAGE[..line], &PAGE[2 * line..]].concat();
        assert_eq!(
            exported_prefix(&without_b, 2, 2, Some("b"), true),
            Exported {
                offset: line,
                lines: 1,
                carry: false
            }
        );
        // Found: the same as by position.
        assert_eq!(
            exported_prefix(PAGE, 3, 2, Some("b"), true),
            exported_prefix(PAGE, 3, 2, Some("b"), false)
        );
        // Every line precedes it and it is gone: keep skipping.
        assert_eq!(
            exported_prefix(&PAGE[..line], 1, 2, Some("b"), true),
            Exported {
                offset: line,
                lines: 1,
                carry: true
            }
        );
        // Nothing precedes it: none of the page was exported.
        assert_eq!(
            exported_prefix(&PAGE[line..], 2, 1, Some("a"), true).lines,
            0
        );
        // Not in id order after all: the position rule decides.
        let shuffled = [&PAGE[2 * line..], &PAGE[..line]].concat();
        assert_eq!(
            exported_prefix(&shuffled, 2, 1, Some("b"), true),
            exported_prefix(&shuffled, 2, 1, Some("b"), false)
        );
    }
}
