//! The frame decoder and the control-message decoder, on arbitrary bytes: never a panic, and
//! whatever decodes re-encodes to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdmabus_proto::frame::FRAME_HEADER_LEN;
use rdmabus_proto::handshake::{ControlMsg, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let _ = ControlMsg::decode(data);
    let mut d = FrameDecoder::default();
    for chunk in data.chunks(7) {
        if d.push(chunk).is_err() {
            return;
        }
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    if let Ok(m) = f.decode_plain() {
                        let again = m.encode();
                        let back = ControlMsg::decode(&again[FRAME_HEADER_LEN..]).unwrap();
                        assert_eq!(back, m);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
