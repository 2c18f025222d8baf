import Testing
import SoulfraMetrics

@Suite("Prometheus text writer")
struct PrometheusTextTests {
    @Test("families, labelled and bare samples, histogram infinities, and escaped label values")
    func format() {
        var p = PrometheusText(prefix: "soulfra_x")
        p.family("requests_total", .counter, "Requests.")
        p.sample("requests_total", ["kind": "message", "world": "a\"b\\c\nd"], 3)
        p.single("open", .gauge, "Open now.", 2)
        p.sample("latency_seconds_bucket", ["le": "+Inf"], 7)
        p.sample("latency_seconds_sum", 0.25)
        p.sample("ratio", Double.infinity)
        #expect(p.text == """
            # HELP soulfra_x_requests_total Requests.
            # TYPE soulfra_x_requests_total counter
            soulfra_x_requests_total{kind="message",world="a\\"b\\\\c\\nd"} 3
            # HELP soulfra_x_open Open now.
            # TYPE soulfra_x_open gauge
            soulfra_x_open 2
            soulfra_x_latency_seconds_bucket{le="+Inf"} 7
            soulfra_x_latency_seconds_sum 0.25
            soulfra_x_ratio +Inf

            """)
    }
}
