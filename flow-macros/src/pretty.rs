//! Compact rendering of tokens for error messages, doc comments and the
//! fingerprint's text (`session.receive::<u32>()` rather than
//! `session . receive :: < u32 > ()`).

use proc_macro2::{TokenStream, TokenTree};

/// Renders tokens compactly for messages and doc comments
/// (`session.receive::<u32>()` rather than `session . receive :: < u32 > ()`).
pub fn pretty_tokens(ts: &TokenStream) -> String {
    let mut out = String::new();
    let mut prev_joint_word = false;
    for tt in ts.clone() {
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    proc_macro2::Delimiter::Parenthesis => ("(", ")"),
                    proc_macro2::Delimiter::Brace => (" { ", " }"),
                    proc_macro2::Delimiter::Bracket => ("[", "]"),
                    proc_macro2::Delimiter::None => ("", ""),
                };
                out.push_str(open);
                out.push_str(&pretty_tokens(&g.stream()));
                out.push_str(close);
                prev_joint_word = true;
            }
            TokenTree::Ident(i) => {
                if prev_joint_word
                    && out.ends_with(|c: char| {
                        c.is_alphanumeric() || c == '_' || c == ')' || c == '>'
                    })
                {
                    out.push(' ');
                }
                out.push_str(&i.to_string());
                prev_joint_word = true;
            }
            TokenTree::Literal(l) => {
                if prev_joint_word && out.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                    out.push(' ');
                }
                out.push_str(&l.to_string());
                prev_joint_word = true;
            }
            TokenTree::Punct(p) => {
                let c = p.as_char();
                if c == ',' {
                    out.push_str(", ");
                } else if c == '=' || c == '+' || c == '-' || c == '*' || c == '/' || c == '|' {
                    if !out.ends_with(' ')
                        && !out.ends_with(['=', '!', '<', '>', '+', '-', '*', '/', '|', '&'])
                    {
                        out.push(' ');
                    }
                    out.push(c);
                    if p.spacing() == proc_macro2::Spacing::Alone {
                        out.push(' ');
                    }
                } else {
                    out.push(c);
                }
                prev_joint_word = false;
            }
        }
    }
    out.trim().to_string()
}

/// Renders tokens for a person reading a label (the state graph's
/// branch conditions): as [`pretty_tokens`], with comparisons and `&&`
/// spaced (`i < rounds && ok` rather than `i<rounds&&ok`). Kept apart from
/// [`pretty_tokens`], whose output is part of the fingerprint.
pub fn readable_tokens(ts: &TokenStream) -> String {
    let text = pretty_tokens(ts);
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 8);
    // Generic `<` opened after `::` (a turbofish), still open.
    let mut generics = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        if in_string || c == '"' {
            if c == '"' && prev != Some('\\') {
                in_string = !in_string;
            }
            out.push(c);
            i += 1;
            continue;
        }
        let operator = match c {
            '<' if generics > 0 || out.ends_with("::") => {
                generics += 1;
                None
            }
            '>' if generics > 0 => {
                generics -= 1;
                None
            }
            // `=>`, `->` and `>=`/`<=` already spaced by `pretty_tokens`.
            '>' if matches!(prev, Some('=' | '-')) => None,
            '<' | '>' if next == Some('=') => Some(format!("{c}=")),
            '<' | '>' => Some(c.to_string()),
            '&' if next == Some('&') => Some("&&".to_owned()),
            _ => None,
        };
        match operator {
            Some(op) => {
                let trimmed = out.trim_end().len();
                out.truncate(trimmed);
                out.push(' ');
                out.push_str(&op);
                out.push(' ');
                i += op.chars().count();
                while chars.get(i) == Some(&' ') {
                    i += 1;
                }
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod readable_tests {
    use super::readable_tokens;

    #[test]
    fn comparisons_are_spaced_and_turbofish_is_not() {
        for (code, shown) in [
            ("i < rounds", "i < rounds"),
            ("n >= 10 && ok", "n >= 10 && ok"),
            ("a <= b || c > d", "a <= b || c > d"),
            (
                "s.receive::<Vec<u8>>().len() > 2",
                "s.receive::<Vec<u8>>().len() > 2",
            ),
            ("x == \"a<b\"", "x == \"a<b\""),
            ("Some(Msg::Ping { n })", "Some(Msg::Ping { n })"),
        ] {
            let ts: proc_macro2::TokenStream = code.parse().unwrap();
            assert_eq!(readable_tokens(&ts), shown, "{code}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pretty_tokens;

    fn pretty(source: &str) -> String {
        pretty_tokens(&source.parse().expect("tokens"))
    }

    #[test]
    fn code_reads_as_written() {
        assert_eq!(
            pretty("session . receive :: < u32 > ()"),
            "session.receive::<u32>()"
        );
        assert_eq!(
            pretty("ctx.sub_flow(child(a, b))"),
            "ctx.sub_flow(child(a, b))"
        );
        assert_eq!(pretty("Vec<(u32, String)>"), "Vec<(u32, String)>");
        assert_eq!(pretty("a = b + 1"), "a = b + 1");
        assert_eq!(pretty("x == y"), "x == y");
        assert_eq!(pretty("&mut self.v"), "&mut self.v");
    }

    #[test]
    fn blocks_and_literals_keep_their_spaces() {
        assert_eq!(pretty("if a { b }"), "if a { b }");
        assert_eq!(pretty("f(1u8, \"x y\")"), "f(1u8, \"x y\")");
    }
}
