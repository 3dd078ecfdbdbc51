//! STUB
pub fn render(summary: &super::summary::Summary) -> String {
    format!("<html>{}</html>", summary.compared)
}
