//! Unsigned numbers as decimal text without the formatting machinery: access.log's
//! fields and a response's Content-Length are written for every request, and `write!`
//! costs more than the rest of either.

/// The decimal digits of `n`, in `buf`.
pub fn digits(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_what_display_writes() {
        let mut buf = [0u8; 20];
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            1_024,
            102_400,
            1_764_169_200_123,
            u64::MAX,
        ] {
            assert_eq!(digits(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
