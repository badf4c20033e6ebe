"""After generation: grounding spans, markdown with cropped figures, and the drawn page.

    from deepseek_ocr.postprocess import render_page, combine_pages
    page_out = render_page(text, page_image, page_name="report-1")
    page_out.markdown, page_out.crops, page_out.drawn, page_out.problems
"""
from .drawing import draw_boxes, label_color
from .grounding import (GroundingSpan, MalformedSpan, normalize_box, out_of_range_values,
                        parse_box_list, parse_grounding, scale_box)
from .markdown import (EOS_STRING, PAGE_SPLIT, PageRender, apply_fixups, build_markdown,
                       combine_pages, render_page, strip_eos)

__all__ = [
    "GroundingSpan", "MalformedSpan", "parse_grounding", "parse_box_list", "scale_box",
    "normalize_box", "out_of_range_values", "PageRender", "render_page", "build_markdown",
    "apply_fixups", "strip_eos", "combine_pages", "EOS_STRING", "PAGE_SPLIT", "draw_boxes",
    "label_color",
]
