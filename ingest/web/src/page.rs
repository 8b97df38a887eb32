//! What every page shares: the HTML shell (escaped by maud), security headers, redirects,
//! message pages, time formatting.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::i18n::Bilingual;

/// The page shell: our own CSS and (optionally) one of our scripts; nothing from elsewhere.
pub fn layout(title: &str, script: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="zh-CN" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · greenplate" }
                link rel="stylesheet" href="/web/style.css";
                @if let Some(s) = script {
                    script src=(s) defer {}
                }
            }
            body { (body) }
        }
    }
}

/// Both languages of a message, side by side.
pub fn both(m: &Bilingual) -> Markup {
    html! { span.zh { (m.zh) } " / " span.en { (m.en) } }
}

/// An HTML response with the headers every page gets: no caching (pages carry personal
/// data and CSRF tokens), no framing, no sniffing, no referrer to other sites (to our own,
/// yes: with none, Chromium sends `Origin: null` on our own forms, and sign-in checks the
/// origin), and a policy that lets the page load only this server's own scripts and styles.
pub fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, markup.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(h);
    r
}

/// The security headers of [`html_response`].
pub fn secure(h: &mut axum::http::HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: http: https:; style-src 'self'; \
             script-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
}

/// 303 See Other to a path of ours, optionally setting a cookie.
pub fn redirect(to: &str, set_cookie: Option<String>) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, c);
    }
    secure(h);
    r
}

/// A page that only says something, with a link onwards.
pub fn message(status: StatusCode, msg: &Bilingual, link: &str) -> Response {
    html_response(
        status,
        layout(
            &msg.en,
            None,
            html! {
                main.narrow {
                    h1 { (both(msg)) }
                    p { a href=(link) { "返回 / Back" } }
                }
            },
        ),
    )
}

/// The answer to a POST whose session is gone (expired or signed out).
pub fn session_expired(link: &str) -> Response {
    message(
        StatusCode::UNAUTHORIZED,
        &Bilingual::new(
            "会话已过期，请重新登录",
            "Your session has expired; please sign in again",
        ),
        link,
    )
}

/// The answer to a POST without the session's CSRF token.
pub fn csrf_refused(link: &str) -> Response {
    message(
        StatusCode::FORBIDDEN,
        &Bilingual::new(
            "表单已失效，请返回重新提交",
            "This form is no longer valid; go back and submit it again",
        ),
        link,
    )
}

/// China Standard Time (UTC+8, no daylight saving).
use greenplate_registry::clock::CST;

/// Unix ms as `YYYY-MM-DD HH:MM:SS` in China Standard Time; `-` for 0.
pub fn datetime(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    match greenplate_registry::clock::at(ms, CST) {
        Some(t) => {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        None => "-".into(),
    }
}

/// `YYYY-MM-DD HH:MM` (a `T` for the space, and seconds, allowed) in China Standard Time,
/// as Unix ms: what [`datetime`] shows, read back from a form.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.trim().replace('T', " ");
    let (date, clock) = s.split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i32>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut c = clock.split(':').map(|p| p.parse::<u8>().ok());
    let (hour, minute) = (c.next()??, c.next()??);
    let second = c.next().flatten().unwrap_or(0);
    if d.next().is_some() || c.next().is_some() {
        return None;
    }
    let date = time::Date::from_calendar_date(
        year,
        time::Month::try_from(u8::try_from(month).ok()?).ok()?,
        u8::try_from(day).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms(hour, minute, second).ok()?;
    let t = time::PrimitiveDateTime::new(date, clock).assume_offset(CST);
    Some(t.unix_timestamp() * 1000)
}

/// Unix ms as `MM-DD HH:MM:SS` (China Standard Time), for lists; `-` for 0.
pub fn short_datetime(ms: i64) -> String {
    let full = datetime(ms);
    full.get(5..).map_or(full.clone(), str::to_owned)
}

/// Percent-encodes a value for a URL's query (`application/x-www-form-urlencoded`).
pub fn query_value(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_is_escaped() {
        let evil = "<script>alert(1)</script>\"'&";
        let page = layout(evil, None, html! { p { (evil) } input value=(evil); }).into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("value=\"<script>"));
    }

    #[test]
    fn times_are_shown_in_china_standard_time() {
        assert_eq!(datetime(0), "-");
        // 2026-01-01 00:00:00 UTC is 08:00 in Shantou.
        assert_eq!(datetime(1_767_225_600_000), "2026-01-01 08:00:00");
        assert_eq!(short_datetime(1_767_225_600_000), "01-01 08:00:00");
        assert_eq!(short_datetime(0), "-");
        assert_eq!(parse_datetime("2026-01-01 08:00"), Some(1_767_225_600_000));
        assert_eq!(
            parse_datetime(" 2026-01-01T08:00:01 "),
            Some(1_767_225_601_000)
        );
        assert_eq!(
            parse_datetime(&datetime(1_767_225_600_000)),
            Some(1_767_225_600_000)
        );
        for bad in [
            "",
            "2026-01-01",
            "2026-13-01 08:00",
            "2026-01-01 25:00",
            "x y",
            "2026-01-01 08:00:00:00",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("潮阳A1"), "%E6%BD%AE%E9%98%B3A1");
        assert_eq!(query_value("a&b=c"), "a%26b%3Dc");
    }
}
