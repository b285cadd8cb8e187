//! Resuming inside a page. A step that filled a part mid-page commits the
//! page's cursor with what it took of that page: a line count and the id of
//! the last line taken. The upstream owes us no stable page: a re-read of the
//! cursor may hold resources added, removed or moved since, or end sooner,
//! so the id decides where the export resumes and the count is only the
//! fallback (a source whose pages re-read exactly, such as NDJSON files,
//! gives the same answer either way).

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

/// The exported prefix of `page` (`count` lines): through the line whose id
/// is `through` when the page holds it, the whole page when it has fewer
/// than `skip` lines and not that line, else `skip` lines.
pub(crate) fn exported_prefix(
    page: &[u8],
    count: u64,
    skip: u64,
    through: Option<&str>,
) -> Exported {
    if skip == 0 {
        return Exported {
            offset: 0,
            lines: 0,
            carry: false,
        };
    }
    if let Some(id) = through {
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
            exported_prefix(PAGE, 3, 2, Some("b")),
            Exported {
                offset: 2 * line,
                lines: 2,
                carry: false
            }
        );
        // A resource before it vanished: the count would skip "c" as well.
        let shorter = &PAGE[line..];
        assert_eq!(
            exported_prefix(shorter, 2, 2, Some("b")),
            Exported {
                offset: line,
                lines: 1,
                carry: false
            }
        );
        // The page ends before the last exported line: all of it was exported.
        assert_eq!(
            exported_prefix(&PAGE[..line], 1, 2, Some("b")),
            Exported {
                offset: line,
                lines: 1,
                carry: true
            }
        );
        // The line is gone and the page is long enough: the count decides.
        assert_eq!(
            exported_prefix(PAGE, 3, 1, Some("z")),
            Exported {
                offset: line,
                lines: 1,
                carry: false
            }
        );
        // Nothing to skip, or no id recorded (chains stored before ids were).
        assert_eq!(exported_prefix(PAGE, 3, 0, Some("b")).lines, 0);
        assert_eq!(
            exported_prefix(PAGE, 3, 2, None),
            Exported {
                offset: 2 * line,
                lines: 2,
                carry: false
            }
        );
        assert_eq!(last_id(&PAGE[..2 * line]).as_deref(), Some("b"));
        assert_eq!(last_id(b""), None);
    }
}
