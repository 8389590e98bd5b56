//! perftest's `--out_json --out_json_file=FILE` report, read leniently.
//!
//! perftest writes that file with `dprintf` format strings, not a JSON library
//! (`write_test_info_to_file`, `write_bw_report_to_file` and `write_report_lat_to_file` in
//! linux-rdma/perftest src/perftest_parameters.c, formats `REPORT_FMT_*_JSON` in
//! perftest_parameters.h), so it is not strict JSON. perftest 4.5-0.17 (tag v4.5-0.17, commit
//! e63987c4, the Debian/Ubuntu `perftest 4.5+0.17` package) writes unquoted keys (`MsgSize: 64,`,
//! one with a space, `Test with events:`, one with a dot, `percentile_99.9:`), unquoted string
//! values (`test: RDMA_Write_Latency_Test,`), a comma after every member, the last ones included
//! (`},` closing `results`), and a space before some colons (`TX_depth : 1`). Later versions
//! (master, 00b55b66) quote keys and strings and drop the trailing commas, but still write
//! `sl: 0` unquoted in the QoS report. This reader takes all of those: keys quoted or bare (up
//! to the `:`), values that are objects, quoted strings or bare words (up to `,`, `}` or the end
//! of the line; a bare word that reads as a finite number is a number), commas optional after a
//! member and tolerated before `}` and after the closing brace.

use serde_json::{Map, Number, Value};

/// Why a report could not be read: the 1-based line and what was wrong there.
#[derive(Debug, PartialEq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses a perftest JSON report (or any JSON object) into a value.
pub fn parse(text: &str) -> Result<Value, ParseError> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    if p.peek() != Some(b'{') {
        return Err(p.err("expected `{` at the start of the report"));
    }
    let v = p.object()?;
    p.ws();
    if p.peek() == Some(b',') {
        p.i += 1;
        p.ws();
    }
    if p.i < p.s.len() {
        return Err(p.err("text after the closing `}`"));
    }
    Ok(v)
}

/// The figures `bench compare` takes from a report.
#[derive(Debug, PartialEq)]
pub struct Figures {
    /// `results.MsgSize`, bytes.
    pub size: Option<u64>,
    /// `results.t_typical` (ib_write_lat: the median one-way latency, µs) or
    /// `results.MsgRate` (ib_write_bw: Mpps), as asked.
    pub value: f64,
}

/// Reads `results.KEY` (and `results.MsgSize`) from a report's text.
pub fn result(text: &str, key: &str) -> Result<Figures, String> {
    let v = parse(text).map_err(|e| e.to_string())?;
    let results = v
        .get("results")
        .and_then(Value::as_object)
        .ok_or("no `results` object (did the run fail?)")?;
    let value = match results.get(key) {
        Some(x) => x
            .as_f64()
            .ok_or_else(|| format!("`results.{key}` is not a number: {x}"))?,
        None => return Err(format!("no `results.{key}`")),
    };
    Ok(Figures {
        size: results.get("MsgSize").and_then(Value::as_u64),
        value,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn line(&self) -> usize {
        1 + self.s[..self.i.min(self.s.len())]
            .iter()
            .filter(|&&c| c == b'\n')
            .count()
    }

    fn err(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line(),
            message: message.into(),
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(c) if c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    /// At `{`.
    fn object(&mut self) -> Result<Value, ParseError> {
        self.i += 1;
        let mut map = Map::new();
        loop {
            self.ws();
            match self.peek() {
                None => return Err(self.err("the report ends inside an object (truncated?)")),
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Object(map));
                }
                Some(b',') => {
                    // An empty member (`,,`) or a comma left before `}`.
                    self.i += 1;
                    continue;
                }
                _ => {}
            }
            let key = self.key()?;
            self.ws();
            let value = self.value()?;
            map.insert(key, value);
            self.ws();
            if self.peek() == Some(b',') {
                self.i += 1;
            }
        }
    }

    fn key(&mut self) -> Result<String, ParseError> {
        let key = if self.peek() == Some(b'"') {
            let k = self.string()?;
            self.ws();
            k
        } else {
            let start = self.i;
            while let Some(c) = self.peek() {
                match c {
                    b':' => break,
                    b'\n' | b'{' | b'}' | b',' | b'"' => {
                        return Err(self.err(format!(
                            "expected `:` after key `{}`",
                            String::from_utf8_lossy(&self.s[start..self.i]).trim()
                        )))
                    }
                    _ => self.i += 1,
                }
            }
            String::from_utf8_lossy(&self.s[start..self.i])
                .trim()
                .to_string()
        };
        if key.is_empty() {
            return Err(self.err("empty key"));
        }
        match self.peek() {
            Some(b':') => {
                self.i += 1;
                Ok(key)
            }
            None => Err(self.err("the report ends after a key (truncated?)")),
            Some(_) => Err(self.err(format!("expected `:` after key `{key}`"))),
        }
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        match self.peek() {
            None => Err(self.err("the report ends before a value (truncated?)")),
            Some(b'{') => self.object(),
            Some(b'"') => self.string().map(Value::String),
            Some(b'[') => Err(self.err("arrays are not part of perftest's report")),
            Some(_) => {
                let start = self.i;
                while !matches!(self.peek(), None | Some(b',' | b'}' | b'\n')) {
                    self.i += 1;
                }
                let word = String::from_utf8_lossy(&self.s[start..self.i])
                    .trim()
                    .to_string();
                if word.is_empty() {
                    return Err(self.err("missing value"));
                }
                Ok(bare(word))
            }
        }
    }

    /// At `"`.
    fn string(&mut self) -> Result<String, ParseError> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("the report ends inside a string (truncated?)")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self
                        .peek()
                        .ok_or_else(|| self.err("the report ends inside a string"))?;
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                    self.i += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

/// A bare word: a number if it reads as a finite one (`64`, `114.20`, `0.008326`), else a string
/// (`RDMA_Write_Latency_Test`, `ON`, or `-nan` from a run that measured nothing).
fn bare(word: String) -> Value {
    if let Ok(n) = word.parse::<u64>() {
        return Value::Number(n.into());
    }
    if let Ok(n) = word.parse::<i64>() {
        return Value::Number(n.into());
    }
    match word.parse::<f64>().ok().and_then(Number::from_f64) {
        Some(n) => Value::Number(n),
        None => Value::String(word),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What perftest 4.5-0.17's ib_write_lat writes (the format strings of tag v4.5-0.17,
    /// filled in for a 64 B RC run on rxe).
    const LAT_4_5_0_17: &str = "{\ntest_info: {\ntest: RDMA_Write_Latency_Test,\nDual_port: OFF,\nDevice: \"rxe1\",\nNumber_of_qps: 1,\nTransport_type: IB,\nConnection_type: RC,\nUsing_SRQ: OFF,\nPCIe_relax_order: OFF,\nibv_wr_API: ON,\nTX_depth : 1,\nMtu: 1024,\nLink_type: Ethernet,\nGID_index: 1,\nMax_inline_data: 220,\nrdma_cm_QPs: OFF,\nData_ex_method: Ethernet,\n},\nresults: {\nMsgSize: 64,\nn_iterations: 3000,\nt_min: 55.12,\nt_max: 3202.51,\nt_typical: 114.20,\nt_avg: 130.84,\nt_stdev: 98.37,\npercentile_99: 473.90,\npercentile_99.9: 1201.13,\n},\n}\n";

    /// What master (00b55b66) writes for the same run.
    const LAT_MASTER: &str = "{\n\"test_info\": {\n\"test\": \"RDMA_Write_Latency_Test\",\n\"Dual_port\": \"OFF\",\n\"Device\": \"rxe1\",\n\"Number_of_qps\": 1,\n\"Data_ex_method\": \"Ethernet\"\n},\n\"results\": {\n\"MsgSize\": 64,\n\"n_iterations\": 3000,\n\"t_min\": 55.12,\n\"t_max\": 3202.51,\n\"t_typical\": 114.20,\n\"t_avg\": 130.84,\n\"t_stdev\": 98.37,\n\"percentile_99\": 473.90,\n\"percentile_99.9\": 1201.13\n}\n}\n";

    #[test]
    fn reads_4_5_0_17_unquoted_keys_and_trailing_commas() {
        let v = parse(LAT_4_5_0_17).unwrap();
        assert_eq!(v["test_info"]["test"], "RDMA_Write_Latency_Test");
        assert_eq!(v["test_info"]["TX_depth"], 1);
        assert_eq!(v["test_info"]["Device"], "rxe1");
        assert_eq!(v["results"]["percentile_99.9"], 1201.13);
        let f = result(LAT_4_5_0_17, "t_typical").unwrap();
        assert_eq!(f.value, 114.20);
        assert_eq!(f.size, Some(64));
    }

    #[test]
    fn reads_masters_quoted_form_like_serde_json() {
        assert_eq!(
            parse(LAT_MASTER).unwrap(),
            serde_json::from_str::<Value>(LAT_MASTER).unwrap()
        );
        assert_eq!(result(LAT_MASTER, "t_typical").unwrap().value, 114.20);
    }

    #[test]
    fn reads_the_qos_reports_bare_sl_and_a_key_with_a_space() {
        let bw = "{\n\"test_info\": {\n\"Test with events\": \"Using_rxe1_comp0\",\n\"Device\": \"rxe1\"\n},\n\"results\": {\n\"MsgSize\": 64,\nsl: 0,\n\"n_iterations\": 5000,\n\"BW_peak\": 0.65,\n\"BW_average\": 0.51,\n \"MsgRate\": 0.008326\n}\n}\n";
        let v = parse(bw).unwrap();
        assert_eq!(v["results"]["sl"], 0);
        assert_eq!(v["test_info"]["Test with events"], "Using_rxe1_comp0");
        assert_eq!(result(bw, "MsgRate").unwrap().value, 0.008326);
    }

    #[test]
    fn a_nan_is_a_string_and_not_a_figure() {
        let t = "{results: {MsgSize: 64, t_typical: -nan,},}";
        assert_eq!(parse(t).unwrap()["results"]["t_typical"], "-nan");
        assert!(result(t, "t_typical")
            .unwrap_err()
            .contains("is not a number"));
    }

    #[test]
    fn malformed_reports_say_where() {
        let truncated = &LAT_4_5_0_17[..LAT_4_5_0_17.find("t_avg").unwrap()];
        let e = parse(truncated).unwrap_err();
        assert!(e.message.contains("truncated"), "{e}");
        assert_eq!(e.line, 26);
        assert_eq!(parse("").unwrap_err().line, 1);
        assert!(parse("{results: {t_typical: 1}} x")
            .unwrap_err()
            .message
            .contains("after the closing"));
        assert!(parse("{results {t_typical: 1}}")
            .unwrap_err()
            .message
            .contains("expected `:`"));
        assert!(parse("{results: {t_typical: }}")
            .unwrap_err()
            .message
            .contains("missing value"));
        assert!(result("{test_info: {},}", "t_typical")
            .unwrap_err()
            .contains("no `results`"));
        assert!(result("{results: {MsgRate: 1},}", "t_typical")
            .unwrap_err()
            .contains("no `results.t_typical`"));
    }
}
