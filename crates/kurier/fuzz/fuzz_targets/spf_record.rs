//! The SPF record checker (RFC 7208 §12) reads TXT records from anyone's DNS: it never
//! panics, a record it accepts is an SPF record made of printable ASCII terms, and doubling
//! the spaces between terms changes nothing (§4.6.1: terms are separated by spaces).
#![no_main]

use kurier::policy::spf_record::{check_record, is_spf_record, select_and_check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let txts: Vec<Vec<u8>> = data.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
    let _ = select_and_check(&txts);
    let accepted = check_record(data).is_ok();
    if accepted {
        assert!(is_spf_record(data));
        assert!(
            data[6..]
                .iter()
                .all(|b| *b == b' ' || (0x21..=0x7e).contains(b))
        );
    }
    if data.len() > 6 && data[6] == b' ' {
        let mut spaced = data[..6].to_vec();
        for &b in &data[6..] {
            spaced.push(b);
            if b == b' ' {
                spaced.push(b' ');
            }
        }
        assert_eq!(check_record(&spaced).is_ok(), accepted);
    }
});
