//! Text output without allocating: a writer over a stack buffer that flushes to fd 2 or a
//! C `FILE*`, used for fatal misuse reports (one line, then abort), warnings, and the
//! statistics report. Never panics.

use crate::os;

pub enum Sink {
    Stderr,
    File(*mut libc::FILE),
}

pub struct Writer {
    buf: [u8; 256],
    len: usize,
    sink: Sink,
}

impl Writer {
    pub fn new(sink: Sink) -> Writer {
        Writer {
            buf: [0; 256],
            len: 0,
            sink,
        }
    }

    pub fn flush(&mut self) {
        match self.sink {
            Sink::Stderr => os::write_stderr(&self.buf[..self.len]),
            Sink::File(f) => {
                // SAFETY: the caller of malloc_info handed us a valid FILE*; fwrite copies the
                // bytes out of our buffer.
                unsafe { libc::fwrite(self.buf.as_ptr() as *const libc::c_void, 1, self.len, f) };
            }
        }
        self.len = 0;
    }

    pub fn bytes(&mut self, s: &[u8]) -> &mut Self {
        for &b in s {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn dec(&mut self, v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = 0;
        let mut x = v;
        loop {
            digits[n] = b'0' + (x % 10) as u8;
            n += 1;
            x /= 10;
            if x == 0 {
                break;
            }
        }
        while n > 0 {
            n -= 1;
            self.bytes(&[digits[n]]);
        }
        self
    }

    /// Right-aligned decimal in a field of `width` characters.
    pub fn dec_w(&mut self, v: u64, width: usize) -> &mut Self {
        let mut digits = 1;
        let mut x = v;
        while x >= 10 {
            x /= 10;
            digits += 1;
        }
        for _ in digits..width {
            self.bytes(b" ");
        }
        self.dec(v)
    }

    pub fn hex(&mut self, v: usize) -> &mut Self {
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
        self.bytes(b"0x");
        while n > 0 {
            n -= 1;
            self.bytes(&[digits[n]]);
        }
        self
    }
}

/// Stops the process: `rsmalloc: <func>(): <what> 0x<addr>`.
#[cold]
#[inline(never)]
pub fn fatal(func: &str, what: &str, addr: usize) -> ! {
    let mut w = Writer::new(Sink::Stderr);
    w.str("rsmalloc: ")
        .str(func)
        .str("(): ")
        .str(what)
        .str(" ")
        .hex(addr)
        .str("\n");
    w.flush();
    os::abort()
}

/// Stops the process after a panic (a bug in rsmalloc): `rsmalloc: internal error at <file>:<line>`.
#[cold]
#[cfg_attr(
    not(all(rsmalloc_so, target_arch = "x86_64", target_os = "linux")),
    allow(dead_code)
)]
pub fn internal_error(at: Option<(&str, u32)>) -> ! {
    let mut w = Writer::new(Sink::Stderr);
    w.str("rsmalloc: internal error");
    if let Some((file, line)) = at {
        w.str(" at ").str(file).str(":").dec(line as u64);
    }
    w.str("\n");
    w.flush();
    os::abort()
}

/// A warning line that does not stop the process (bad options and the like).
pub fn warn(parts: &[&[u8]]) {
    let mut w = Writer::new(Sink::Stderr);
    w.str("rsmalloc: warning: ");
    for p in parts {
        w.bytes(p);
    }
    w.str("\n");
    w.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn number_formatting() {
        let mut w = Writer::new(Sink::Stderr);
        w.hex(0x7f12_ab00)
            .str(" ")
            .hex(0)
            .str(" ")
            .dec(0)
            .str(" ")
            .dec(18446744073709551615)
            .dec_w(42, 5);
        assert_eq!(
            &w.buf[..w.len],
            b"0x7f12ab00 0x0 0 18446744073709551615   42"
        );
    }
}
