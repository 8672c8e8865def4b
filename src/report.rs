//! Fatal misuse reports: one line on stderr, then abort. Formats into a stack buffer;
//! never allocates, never panics.

use crate::os;

struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() - 1 {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }
    fn push_hex(&mut self, v: usize) {
        let mut digits = [0u8; 16];
        let mut n = 0;
        let mut x = v;
        loop {
            digits[n] = b"0123456789abcdef"[x & 15];
            n += 1;
            x >>= 4;
            if x == 0 {
                break;
            }
        }
        self.push(b"0x");
        while n > 0 {
            n -= 1;
            self.push(&digits[n..n + 1]);
        }
    }
}

/// Stops the process: `rsmalloc: <func>(): <what> 0x<addr>`.
#[cold]
#[inline(never)]
pub fn fatal(func: &str, what: &str, addr: usize) -> ! {
    let mut l = Line { buf: [0; 192], len: 0 };
    l.push(b"rsmalloc: ");
    l.push(func.as_bytes());
    l.push(b"(): ");
    l.push(what.as_bytes());
    l.push(b" ");
    l.push_hex(addr);
    l.push(b"\n");
    os::write_stderr(&l.buf[..l.len]);
    os::abort()
}

/// A warning line that does not stop the process (bad options and the like).
pub fn warn(parts: &[&[u8]]) {
    let mut l = Line { buf: [0; 192], len: 0 };
    l.push(b"rsmalloc: warning: ");
    for p in parts {
        l.push(p);
    }
    l.push(b"\n");
    os::write_stderr(&l.buf[..l.len]);
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn hex_formatting() {
        let mut l = Line { buf: [0; 192], len: 0 };
        l.push_hex(0x7f12_ab00);
        assert_eq!(&l.buf[..l.len], b"0x7f12ab00");
        let mut z = Line { buf: [0; 192], len: 0 };
        z.push_hex(0);
        assert_eq!(&z.buf[..z.len], b"0x0");
    }
}
