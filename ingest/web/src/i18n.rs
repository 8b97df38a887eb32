//! What the registry's errors (and the alerting library's) say, in Chinese and English, for
//! the person at the counter or the duty officer. The registry names the field at fault
//! (`owner.id_number`) and the reason in English; this module puts a Chinese sentence beside
//! it, e.g. "身份证号码无效：校验码不符 / Invalid ID number: check digit does not match".

use greenplate_alerting::AlertingError;
use greenplate_registry::RegistryError;

/// A message in both languages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bilingual {
    pub zh: String,
    pub en: String,
}

impl std::fmt::Display for Bilingual {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {}", self.zh, self.en)
    }
}

impl Bilingual {
    pub fn new(zh: impl Into<String>, en: impl Into<String>) -> Self {
        Self {
            zh: zh.into(),
            en: en.into(),
        }
    }
}

/// The name of a form field (a registry field name, prefix and all) in Chinese and English.
pub fn field_name(field: &str) -> (&'static str, &'static str) {
    let base = field.rsplit('.').next().unwrap_or(field);
    match base {
        "name" => ("姓名", "name"),
        "id_number" | "owner_id_number" => ("身份证号码", "ID number"),
        "phone" => ("手机号码", "phone number"),
        "plate" => ("车牌号", "plate"),
        "tag_id" | "new_tag_id" => ("电子标签号", "tag id"),
        "make" => ("品牌", "make"),
        "model" => ("型号", "model"),
        "color" => ("颜色", "color"),
        "frame_number" => ("车架号", "frame number"),
        "new_pin" => ("新密码", "new PIN"),
        "pin_again" => ("再次输入密码", "PIN again"),
        "pin" => ("密码", "PIN"),
        "place" => ("地点", "place"),
        "notes" | "note" => ("备注", "notes"),
        "reason" => ("原因", "reason"),
        "stolen_at_ms" => ("被盗时间", "time of theft"),
        "case_number" => ("案件编号", "case number"),
        "priority" => ("优先级", "priority"),
        "expires_at_ms" => ("有效时长", "expiry"),
        "from_ms" | "to_ms" => ("时间窗", "window"),
        "reader_ids" => ("读写器", "readers"),
        "polygon_geojson" => ("区域", "area"),
        "delta_ms" => ("时间差", "time apart"),
        "min_readers" => ("至少共同读写器数", "readers in common"),
        "url_template" => ("摄像头地址模板", "camera URL template"),
        _ => ("字段", "field"),
    }
}

/// A registry reason in Chinese.
fn reason_zh(reason: &str) -> &'static str {
    match reason {
        "is required" => "不能为空",
        "is too long" => "太长",
        "has an invalid birth date" => "出生日期无效",
        "check digit does not match" => "校验码不符",
        "must be 4 to 8 digits" => "必须是4到8位数字",
        "is in the future" => "不能是将来的时间",
        "is before the year 2000" => "不能早于2000年",
        "must be at least 2" => "至少为2",
        "must be 1 to 600000" => "必须是1至600000毫秒（10分钟）",
        "is more than 7 days after from_ms" => "不能超过7天",
        "and to_ms must give a window (from_ms <= to_ms)" => "开始时间必须早于结束时间",
        "name no reader (or the polygon holds none)" => "没有对应的读写器（或区域内没有读写器）",
        "must be 1 (normal), 2 (urgent) or 3 (critical)" => "必须是1（一般）、2（紧急）或3（特急）",
        "must be within 366 days" => "不能超过366天",
        "give a plate or a tag_id (one of the two)" => "请填写车牌号或电子标签号（二选一）",
        r if r.starts_with("must be an EPC-96") => "必须是24位十六进制数字（EPC-96）",
        r if r.starts_with("must be 1-3 district") => {
            "格式不对：1至3个地区汉字加4至8位字母或数字，例如 潮阳A12345"
        }
        r if r.starts_with("must be 18 characters") => "必须是18位：17位数字加一位数字或X",
        r if r.starts_with("must be an 11-digit") => "必须是13至19开头的11位手机号码",
        r if r.starts_with("must be 6 to 20") => "必须是6至20位字母或数字",
        _ => "格式不对",
    }
}

/// What went wrong with a kiosk request, for the page: at a field when the registry names
/// one, else for the whole form. `None` as the field and a 5xx status for the server's own
/// failures (whose details go to the log, not the page).
pub fn explain(e: &RegistryError) -> (Option<&'static str>, Bilingual) {
    match e {
        RegistryError::Invalid { field, reason } => {
            let (zh, en) = field_name(field);
            (
                Some(field),
                Bilingual::new(
                    format!("{zh}无效：{}", reason_zh(reason)),
                    format!("Invalid {en}: {reason}"),
                ),
            )
        }
        RegistryError::InvalidValue { field, reason } => {
            let (zh, en) = field_name(field);
            (
                Some(field),
                Bilingual::new(
                    format!("{zh}无效：{reason}"),
                    format!("Invalid {en}: {reason}"),
                ),
            )
        }
        RegistryError::AlreadyExists(what) => {
            let field = if what.starts_with("tag ") {
                Some("tag_id")
            } else if what.starts_with("plate ") {
                Some("plate")
            } else {
                None
            };
            let zh = match field {
                Some("tag_id") => "该电子标签已登记（一个电子标签只能绑定一辆车）",
                Some(_) => "该车牌已登记",
                None => "已存在",
            };
            (field, Bilingual::new(zh, format!("{e}")))
        }
        RegistryError::NotFound(_) => (None, Bilingual::new("未找到", format!("{e}"))),
        RegistryError::RateLimited(_) => (
            None,
            Bilingual::new("查询过于频繁，请一分钟后再试", format!("{e}")),
        ),
        RegistryError::PermissionDenied(why) => {
            let zh = if why.contains("locked") {
                "密码输错次数过多，已暂时锁定"
            } else if why.contains("PIN") {
                "密码不对"
            } else {
                "无权办理"
            };
            let field = why.contains("PIN").then_some("pin");
            (field, Bilingual::new(zh, why.clone()))
        }
        RegistryError::FailedPrecondition(why) => {
            let zh = if why.contains("not reported stolen") {
                "该车没有被盗报案"
            } else if why.contains("reported stolen") {
                "该车已被盗报案，请先登记找回"
            } else if why.contains("no PIN") {
                "该车尚未设置密码"
            } else {
                "当前状态下无法办理"
            };
            (None, Bilingual::new(zh, why.clone()))
        }
        RegistryError::Crypto | RegistryError::Corrupt(_) | RegistryError::Db(_) => (
            None,
            Bilingual::new(
                "系统错误，请稍后再试",
                "Internal error; please try again later",
            ),
        ),
    }
}

/// What an alerting call's error says: a registry error as [`explain`] says it, a zone's
/// reason as the alerting library gives it, a database failure without its details.
pub fn explain_alerting(e: &AlertingError) -> Bilingual {
    match e {
        AlertingError::Registry(r) => explain(r).1,
        AlertingError::Zone(z) => Bilingual::new("无效", z.to_string()),
        AlertingError::Db(_) => Bilingual::new("系统错误", "Internal error"),
    }
}

/// True for the server's own failures (shown as a 500, logged).
pub fn is_internal(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::Crypto | RegistryError::Corrupt(_) | RegistryError::Db(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_id_number_is_explained_at_its_field_in_both_languages() {
        let (field, msg) = explain(&RegistryError::invalid(
            "owner.id_number",
            "check digit does not match",
        ));
        assert_eq!(field, Some("owner.id_number"));
        assert_eq!(msg.zh, "身份证号码无效：校验码不符");
        assert_eq!(msg.en, "Invalid ID number: check digit does not match");
    }

    #[test]
    fn taken_tags_and_plates_point_at_their_fields() {
        let (f, _) = explain(&RegistryError::AlreadyExists("tag E2801160".into()));
        assert_eq!(f, Some("tag_id"));
        let (f, _) = explain(&RegistryError::AlreadyExists("plate 潮阳A1".into()));
        assert_eq!(f, Some("plate"));
        let (f, m) = explain(&RegistryError::PermissionDenied(
            "PIN does not match".into(),
        ));
        assert_eq!((f, m.zh.as_str()), (Some("pin"), "密码不对"));
    }

    #[test]
    fn every_field_the_forms_use_has_a_name() {
        for f in [
            "owner.name",
            "owner.id_number",
            "owner.phone",
            "new_owner.id_number",
            "plate",
            "tag_id",
            "new_tag_id",
            "bike.make",
            "bike.model",
            "bike.color",
            "bike.frame_number",
            "pin",
            "new_pin",
            "place",
            "notes",
        ] {
            assert_ne!(field_name(f).0, "字段", "{f}");
        }
    }
}
