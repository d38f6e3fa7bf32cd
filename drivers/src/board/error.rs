//! Board-file errors: every problem names the file, the line and column, and the field.

use std::fmt;

/// What kind of problem a board file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// The file could not be read.
    Io,
    /// Not valid TOML, an unknown field, or a value of the wrong type.
    Syntax,
    /// `--board NAME` names no built-in board.
    UnknownBoard,
    /// `driver` names no driver this crate has.
    UnknownDriver,
    /// A field the driver needs is missing (e.g. `bus` for an I2C sensor).
    MissingField,
    /// A field that does not apply to the resource's driver.
    NotApplicable,
    /// A value out of range or not understood.
    BadValue,
    /// An I2C address outside 0x03-0x77.
    BadAddress,
    /// The same GPIO line (chip + offset) is used twice.
    LineInUse,
    /// The same I2C bus + address is used by two different devices.
    AddressInUse,
    /// Two resources with the same href.
    DuplicateHref,
}

/// A position in a board file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `text`.
    pub fn of(text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Location { line, column }
    }
}

/// One problem in a board file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// Where (absent for a file that could not be read).
    pub location: Option<Location>,
    /// The text, naming the resource and field, e.g. `resource "/relay": GPIO line 17 on
    /// gpiochip0 is already used by "/led" (line 7)`.
    pub message: String,
}

/// Why a board description was refused: all the problems found in one file (at least one).
///
/// Displayed one problem per line as `FILE:LINE:COLUMN: MESSAGE`, the form editors and
/// terminals link to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardError {
    /// The file as it was named (a path, or `board/NAME.toml` for a built-in board).
    pub file: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl BoardError {
    pub(crate) fn single(
        file: &str,
        kind: ProblemKind,
        location: Option<Location>,
        message: String,
    ) -> Self {
        BoardError {
            file: file.to_owned(),
            problems: vec![Problem {
                kind,
                location,
                message,
            }],
        }
    }

    /// Whether any problem is of `kind`.
    pub fn has(&self, kind: ProblemKind) -> bool {
        self.problems.iter().any(|p| p.kind == kind)
    }
}

impl fmt::Display for BoardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.location {
                Some(l) => write!(f, "{}:{}:{}: {}", self.file, l.line, l.column, p.message)?,
                None => write!(f, "{}: {}", self.file, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for BoardError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(Location::of(t, 0), Location { line: 1, column: 1 });
        assert_eq!(Location::of(t, 6), Location { line: 2, column: 1 });
        assert_eq!(Location::of(t, 11), Location { line: 2, column: 5 });
        assert_eq!(Location::of(t, 999).line, 3);
    }
}
